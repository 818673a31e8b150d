"""The appearance-feature interface (ψ in the global-optimisation affinity).

A backend maps RGB frames to a feature map on a coarse grid. The offline default (colour +
position) needs no weights; ViT backends (DINO, DINOv2 via timm) plug in behind the same call.
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

from ..registry import Registry


class FeatureBackend:
    name = "base"

    def __call__(self, frames: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
        """(T,H,W,3) uint8 RGB -> (T,h,w,C) float32 features on the (h, w) grid (a numpy array, or a tensor
        left on the backend's device)."""
        raise NotImplementedError


FEATURES: Registry[Callable[..., FeatureBackend]] = Registry("feature backend")
register_features = FEATURES.register
available_features = FEATURES.names


def create_features(name: str, **kwargs) -> FeatureBackend:
    return FEATURES.get(name)(**kwargs)
