"""Appearance features behind one interface (see :mod:`vosbatch.features.base`)."""
from .base import FeatureBackend, available_features, create_features, register_features
from . import colour  # noqa: F401  (registers "colour")

__all__ = ["FeatureBackend", "available_features", "create_features", "register_features"]
