"""The per-video colour model: let the object's colours decide where motion is silent.

Motion finds the object only where it moves differently from the background; parts that move
little, or frames where flow fails, are missed. The object's colours are shared across the video, so
P(fg | colour), from two Lab histograms of the confident pixels of all frames (as in Papazoglou &
Ferrari, ICCV 2013), is combined with the soft mask by adding log-odds; a second round relearns the
model from the combined masks.

Torch on the masks' device: the Lab conversion is OpenCV's on the CPU (8-bit Lab as OpenCV defines it),
sent to the device once per window; histograms, posteriors and log-odds are computed where the masks are.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch

from ..ops.parallel import thread_map


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def colour_bins(frames: np.ndarray, bins: int = 16, device: Optional[torch.device] = None) -> torch.Tensor:
    """Each pixel's Lab colour bin (T,H,W) int32 on ``device``: ``bins`` levels per channel."""
    lab = np.empty_like(frames)

    def one(t: int) -> None:  # OpenCV releases the GIL
        lab[t] = cv2.cvtColor(np.ascontiguousarray(frames[t]), cv2.COLOR_RGB2LAB)

    thread_map(one, range(len(frames)))
    q = (torch.from_numpy(lab).to(device).to(torch.int32) * bins) >> 8  # uint8 over the bus, not int32
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def colour_posterior(bin_index: torch.Tensor, soft: torch.Tensor, bins: int = 16, confident: float = 0.25,
                     prior: float = 1.0) -> torch.Tensor:
    """P(foreground | Lab colour) per pixel, from histograms of pixels with soft > 1-c and < c
    (``bin_index``: :func:`colour_bins` of the frames)."""
    fg = torch.bincount(bin_index[soft > 1 - confident], minlength=bins**3).double() + prior  # Laplace smoothing
    bg = torch.bincount(bin_index[soft < confident], minlength=bins**3).double() + prior
    fg, bg = fg / fg.sum(), bg / bg.sum()
    return (fg / (fg + bg)).float()[bin_index]


def colour_model_refine(bin_index: torch.Tensor, soft: torch.Tensor, weight: float = 2.0, rounds: int = 2) -> torch.Tensor:
    """Soft masks (T,H,W) combined with the video's colour model: σ(logit(soft) + w·logit(P(fg|c))),
    ``rounds`` times, each relearning the model from the previous round's masks. ``bin_index``: the
    frames' :func:`colour_bins`, on the device of ``soft``."""
    if weight <= 0 or rounds <= 0:
        return soft
    base = _logit(soft)
    current = soft
    for _ in range(rounds):
        current = torch.sigmoid(base + weight * _logit(colour_posterior(bin_index, current)))
    return current
