"""The appearance-feature interface (ψ in the global-optimisation affinity).

A backend maps RGB frames to a feature map on a coarse grid. The offline default (colour +
position) needs no weights; ViT backends (DINO, DINOv2 via timm) plug in behind the same call.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

_REGISTRY: Dict[str, Callable[..., "FeatureBackend"]] = {}


class FeatureBackend:
    name = "base"

    def __call__(self, frames: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
        """(T,H,W,3) uint8 RGB -> (T,h,w,C) float32 features on the (h, w) grid."""
        raise NotImplementedError


def register_features(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_features() -> list[str]:
    return sorted(_REGISTRY)


def create_features(name: str, **kwargs) -> FeatureBackend:
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature backend {name!r}; available: {', '.join(available_features())}")
    return _REGISTRY[name](**kwargs)
