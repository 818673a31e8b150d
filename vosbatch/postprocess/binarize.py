"""Soft masks at a coarse grid -> binary masks at the original resolution.

Refinements (``refine``): ``"crf"`` (the fast global smoother, then a dense CRF: the pipeline's default,
``RunConfig.refine``), ``"fgs"`` (the smoother alone), ``"none"`` (plain bilinear upsampling).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from ..config import REFINEMENTS
from .colour_model import colour_model_refine
from .crf import CRFParams, crf_refine
from .refine import smoother_refine


def upsample(soft: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of soft masks (T,h,w) to (T,height,width), float32."""
    t = torch.from_numpy(np.ascontiguousarray(soft, np.float32))[:, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()


def kmeans_threshold(soft: np.ndarray, samples: int = 200_000, seed: int = 0, min_gap: float = 0.2) -> float:
    """Threshold separating the two K-means (K=2) clusters of soft values over the whole video.

    One threshold per video (not per frame) keeps frames consistent; it is the midpoint of the two
    centres. When the centres are closer than ``min_gap`` the video has no clear two-level
    structure and 0.5 — the decision boundary of the probabilities — is the justified choice.
    """
    flat = soft.reshape(-1)
    rng = np.random.default_rng(seed)
    if flat.size > samples:
        flat = flat[rng.choice(flat.size, samples, replace=False)]
    km = KMeans(n_clusters=2, n_init=3, random_state=seed).fit(flat[:, None].astype(np.float64))
    lo, hi = sorted(km.cluster_centers_[:, 0])
    return 0.5 * (lo + hi) if hi - lo >= min_gap else 0.5


def centre_at_cut(soft: np.ndarray, sharpness: float = 1.0, seed: int = 0, cut: Optional[float] = None) -> np.ndarray:
    """Soft masks re-centred so that the video's K-means threshold τ maps to 0.5:
    σ(sharpness · (logit p − logit τ)), float32. ``cut``: τ when the caller already has it.

    The CRF and the colour model read 0.5 as the decision boundary (and the colour model > 0.75 /
    < 0.25 as confident); K-means puts the video's boundary at τ. The shift is in logit space, so 0
    and 1 stay 0 and 1; ``sharpness`` > 1 also spreads a score that is not a probability (an
    eigenvector scaled to [0,1]) over the confident ranges.
    """
    tau = float(np.clip(kmeans_threshold(soft, seed=seed) if cut is None else cut, 1e-3, 1 - 1e-3))
    p = np.clip(soft, 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    return (1.0 / (1.0 + np.exp(-sharpness * (logit - np.log(tau / (1 - tau)))))).astype(np.float32)


def binarize(
    soft: np.ndarray,
    height: int,
    width: int,
    seed: int = 0,
    guide: Optional[np.ndarray] = None,
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
    full = soft_at_full_size(soft, height, width, guide, colour_weight)
    return refine_and_threshold(full, guide, refine, seed, crf_params)


def soft_at_full_size(soft: np.ndarray, height: int, width: int, guide: Optional[np.ndarray] = None,
                      colour_weight: float = 0.0) -> np.ndarray:
    """The first half of :func:`binarize`: upsampling and the colour model."""
    full = upsample(soft, height, width)
    if guide is not None and colour_weight > 0:
        full = colour_model_refine(guide, full, weight=colour_weight)
    return full


def refine_and_threshold(full: np.ndarray, guide: Optional[np.ndarray] = None, refine: str = "fgs", seed: int = 0,
                         crf_params: Optional[CRFParams] = None) -> np.ndarray:
    """The second half of :func:`binarize`: refinement and the threshold -> bool masks."""
    if refine not in REFINEMENTS:
        raise ValueError(f"unknown refinement {refine!r}; choose from {', '.join(REFINEMENTS)}")
    if guide is None or refine == "none":
        return full > kmeans_threshold(full, seed=seed)
    full = smoother_refine(guide, full)
    if refine == "crf":
        return crf_refine(guide, centre_at_cut(full, seed=seed), crf_params) > 0.5
    return full > kmeans_threshold(full, seed=seed)
