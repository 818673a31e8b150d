"""Appearance features behind one interface (see :mod:`vosbatch.features.base`)."""
from .base import FeatureBackend, available_features, create_features, register_features
from . import colour  # noqa: F401  (registers "colour")
from . import vit  # noqa: F401  (registers "dino-vits16", "dino-vits8", "dino-vitb16", "dino-vitb8", "dinov2-vits14")

__all__ = ["FeatureBackend", "available_features", "create_features", "register_features"]
