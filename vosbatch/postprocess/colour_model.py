"""The per-video colour model: let the object's colours decide where motion is silent.

Motion finds the object only where it moves differently from the background; parts that move
little, or frames where flow fails, are missed. The object's colours are shared across the video, so
P(fg | colour), from two Lab histograms of the confident pixels of all frames (as in Papazoglou &
Ferrari, ICCV 2013), is combined with the soft mask by adding log-odds; a second round relearns the
model from the combined masks.
"""
from __future__ import annotations

import cv2
import numpy as np


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def colour_bins(frames: np.ndarray, bins: int = 16) -> np.ndarray:
    """Each pixel's Lab colour bin (T,H,W) int32: ``bins`` levels per channel."""
    lab = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB) for f in frames])
    q = (lab.astype(np.int32) * bins) >> 8
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def colour_posterior(frames: np.ndarray, soft: np.ndarray, bins: int = 16, confident: float = 0.25,
                     prior: float = 1.0, idx: np.ndarray | None = None) -> np.ndarray:
    """P(foreground | Lab colour) per pixel, from histograms of pixels with soft > 1-c and < c (``idx``:
    :func:`colour_bins` of the frames, when the caller has them)."""
    idx = colour_bins(frames, bins) if idx is None else idx
    fg = np.bincount(idx[soft > 1 - confident], minlength=bins**3) + prior  # Laplace smoothing
    bg = np.bincount(idx[soft < confident], minlength=bins**3) + prior
    fg, bg = fg / fg.sum(), bg / bg.sum()
    return (fg / (fg + bg))[idx].astype(np.float32)


def colour_model_refine(frames: np.ndarray, soft: np.ndarray, weight: float = 2.0, rounds: int = 2) -> np.ndarray:
    """Soft masks (T,H,W) combined with the video's colour model: σ(logit(soft) + w·logit(P(fg|c))),
    ``rounds`` times, each relearning the model from the previous round's masks."""
    if weight <= 0 or rounds <= 0:
        return soft
    base = _logit(soft)
    idx = colour_bins(frames)  # the colours do not change between rounds
    current = soft
    for _ in range(rounds):
        current = 1.0 / (1.0 + np.exp(-(base + weight * _logit(colour_posterior(frames, current, idx=idx)))))
    return current.astype(np.float32)
