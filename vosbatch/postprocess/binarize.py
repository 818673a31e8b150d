"""Soft masks at a coarse grid -> binary masks at the original resolution.

Refinements (``refine``): ``"crf"`` (the fast global smoother, then a dense CRF: the pipeline's default,
``RunConfig.refine``), ``"fgs"`` (the smoother alone), ``"none"`` (plain bilinear upsampling).

Upsampling, the colour model and the K-means cut run in torch on the guide's device (the run's
``--device``); the smoother and the CRF are OpenCV's and pydensecrf's, on the CPU, so each stage's
full-size probabilities come back to the host once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Union

import numpy as np
import torch

from ..config import REFINEMENTS
from ..ops.grid import bilinear_resize
from .colour_model import colour_bins, colour_model_refine
from .crf import CRFParams, crf_refine
from .refine import smoother_refine

Array = Union[np.ndarray, torch.Tensor]


@dataclass
class Guide:
    """A window's frames (T,H,W,3) uint8 as the refinements' guide, and the device the arithmetic runs on.
    The frames' colour bins go to the device once and serve every stage binarised against them."""

    frames: np.ndarray
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @cached_property
    def colour_bins(self) -> torch.Tensor:
        return colour_bins(self.frames, device=self.device)


def _tensor(x: Array) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x, np.float32))


def two_means_1d(values: torch.Tensor) -> tuple[float, float]:
    """The K-means (K=2) centres of 1-D values, exactly: in 1-D the optimal two clusters split the sorted
    values at one point, the one with the largest between-cluster sum of squares k(n-k)(m₂-m₁)²/n (Otsu's
    criterion), so one sort and a cumulative sum find the global optimum that Lloyd's iterations with
    restarts only approach, on whatever device the values are."""
    x = values.reshape(-1).double().sort().values
    n = x.numel()
    if n < 2:
        v = float(x[0]) if n else 0.5
        return v, v
    csum = x.cumsum(0)
    k = torch.arange(1, n, device=x.device, dtype=torch.float64)  # values in the lower cluster
    low = csum[:-1] / k
    high = (csum[-1] - csum[:-1]) / (n - k)
    best = int(torch.argmax(k * (n - k) * (high - low) ** 2))
    return float(low[best]), float(high[best])


def kmeans_threshold(soft: Array, samples: int = 200_000, seed: int = 0, min_gap: float = 0.2) -> float:
    """Threshold separating the two K-means (K=2) clusters of soft values over the whole video.

    One threshold per video (not per frame) keeps frames consistent; it is the midpoint of the two
    centres. When the centres are closer than ``min_gap`` the video has no clear two-level
    structure and 0.5 — the decision boundary of the probabilities — is the justified choice.
    A video's values are subsampled (the same ``samples`` whatever the device: numpy's generator
    picks them) and clustered where they are (:func:`two_means_1d`).
    """
    flat = _tensor(soft).reshape(-1)
    if flat.numel() > samples:
        pick = np.random.default_rng(seed).choice(flat.numel(), samples, replace=False)
        flat = flat[torch.from_numpy(pick).to(flat.device)]
    lo, hi = two_means_1d(flat)
    return 0.5 * (lo + hi) if hi - lo >= min_gap else 0.5


def centre_at_cut(soft: Array, sharpness: float = 1.0, seed: int = 0, cut: Optional[float] = None) -> Array:
    """Soft masks re-centred so that the video's K-means threshold τ maps to 0.5:
    σ(sharpness · (logit p − logit τ)), float32, a tensor for a tensor and an array for an array. ``cut``: τ
    when the caller already has it.

    The CRF and the colour model read 0.5 as the decision boundary (and the colour model > 0.75 /
    < 0.25 as confident); K-means puts the video's boundary at τ. The shift is in logit space, so 0
    and 1 stay 0 and 1; ``sharpness`` > 1 also spreads a score that is not a probability (an
    eigenvector scaled to [0,1]) over the confident ranges.
    """
    tau = float(np.clip(kmeans_threshold(soft, seed=seed) if cut is None else cut, 1e-3, 1 - 1e-3))
    p = _tensor(soft).float().clamp(1e-6, 1 - 1e-6)
    out = torch.sigmoid(sharpness * (torch.log(p) - torch.log1p(-p) - float(np.log(tau / (1 - tau)))))
    return out if torch.is_tensor(soft) else out.numpy()


def binarize(
    soft: Array,
    height: int,
    width: int,
    seed: int = 0,
    guide: Union[None, np.ndarray, Guide] = None,
    colour_weight: float = 0.0,
    refine: str = "fgs",
    crf_params: Optional[CRFParams] = None,
) -> np.ndarray:
    """Soft masks on a coarse grid (T,h,w) -> binary masks (T,height,width) at full resolution.

    Upsample; with ``guide`` frames (T,height,width,3) fold in the video's colour model
    (``colour_weight`` > 0, :mod:`vosbatch.postprocess.colour_model`); then
    - ``refine="fgs"``: snap edges to the image with the fast global smoother
      (:mod:`vosbatch.postprocess.refine`), then one K-means (K=2) threshold for the whole video;
    - ``refine="crf"``: the smoother first (its edge-snapped probabilities are a sharper unary
      than the blocky upsampled ones), the K-means threshold τ of that, the probabilities re-centred
      so that τ maps to 0.5 (σ(logit p - logit τ): the CRF's unary must put the decision where the
      video's two levels split), then a dense CRF per frame and its argmax;
    - ``refine="none"``: the K-means threshold of the upsampled masks.
    Without ``guide`` there is nothing to refine against and the last case applies.
    """
    if refine not in REFINEMENTS:
        raise ValueError(f"unknown refinement {refine!r}; choose from {', '.join(REFINEMENTS)}")
    if guide is not None and not isinstance(guide, Guide):
        guide = Guide(guide)
    full = bilinear_resize(_tensor(soft).float(), (height, width), guide.device if guide is not None else None)
    if guide is not None and colour_weight > 0:
        full = colour_model_refine(guide.colour_bins, full, weight=colour_weight)
    if guide is None or refine == "none":
        return (full > kmeans_threshold(full, seed=seed)).cpu().numpy()
    full = smoother_refine(guide.frames, full.cpu().numpy())  # OpenCV: the one transfer to the host
    if refine == "crf":
        return crf_refine(guide.frames, centre_at_cut(full, seed=seed), crf_params) > 0.5
    return full > kmeans_threshold(full, seed=seed)
