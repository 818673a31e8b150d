"""Soft masks at a coarse grid -> binary masks at the original resolution."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from .appearance import colour_model_refine
from .refine import guided_refine


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


def binarize(
    soft: np.ndarray,
    height: int,
    width: int,
    seed: int = 0,
    guide: Optional[np.ndarray] = None,
    colour_weight: float = 0.0,
    edge_refine: bool = True,
) -> np.ndarray:
    """Soft masks on a coarse grid (T,h,w) -> binary masks (T,height,width) at full resolution.

    Upsample; with ``guide`` frames (T,height,width,3) fold in the video's colour model
    (``colour_weight`` > 0, :mod:`vosbatch.postprocess.appearance`) and, with ``edge_refine``, snap
    edges to the image with the guided filter (:mod:`vosbatch.postprocess.refine`); then one K-means
    (K=2) threshold for the whole video.
    """
    full = upsample(soft, height, width)
    if guide is not None and colour_weight > 0:
        full = colour_model_refine(guide, full, weight=colour_weight)
    if guide is not None and edge_refine:
        full = guided_refine(guide, full)
    return full > kmeans_threshold(full, seed=seed)
