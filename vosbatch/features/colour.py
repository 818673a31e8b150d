"""Offline appearance features: CIE Lab colour and image position, standardised per frame.

Why standardise: the affinity compares features by cosine similarity, and raw Lab vectors all
point the same way (L dominates), which would make every pair look alike. Centring and scaling
per frame turns the cosine into a meaningful "same colour / nearby" score.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

from .base import FeatureBackend, register_features


class ColourPositionFeatures(FeatureBackend):
    name = "colour"

    def __init__(self, position_weight: float = 0.5) -> None:
        self.position_weight = position_weight

    def __call__(self, frames: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
        h, w = grid
        lab = np.stack(
            [cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2LAB) for f in frames]
        ).astype(np.float32)
        lab = (lab - lab.mean(axis=(1, 2), keepdims=True)) / (lab.std(axis=(1, 2), keepdims=True) + 1e-3)
        ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        pos = np.broadcast_to(np.stack([xs, ys], -1) * np.sqrt(3.0), (len(frames), h, w, 2))
        return np.concatenate([lab, self.position_weight * pos.astype(np.float32)], axis=-1)


@register_features("colour")
def _colour(**kwargs) -> ColourPositionFeatures:
    return ColourPositionFeatures(**kwargs)
