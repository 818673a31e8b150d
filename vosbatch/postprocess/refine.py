"""Edge-aware refinement of soft masks with the frame as guide (CRF-free, fast).

Masks optimised on a coarse grid and upsampled bilinearly have blurry, blocky edges that ignore the
image. Two OpenCV ximgproc filters make them follow the frame:

- the **fast global smoother** (Min et al., TIP 2014; the default): a weighted-least-squares fit that
  stays close to the mask while smoothing it everywhere *except* across colour edges, so probability
  spreads along an object up to its outline and stops there (~6 ms per 480p frame);
- the **guided filter** (He et al., TPAMI 2013): the mask becomes locally an affine function of the
  frame's colours within a fixed window (~10 ms per 480p frame).

On DAVIS 2016 val (RAFT-small, global optimisation, colour model, no CRF) the smoother gives J 0.621 /
F 0.588 against the guided filter's 0.615 / 0.566 (README's ablation table).
"""
from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

REFERENCE_DIAGONAL = float(np.hypot(854, 480))  # DAVIS 480p: the size at which pixel-unit parameters here and in .crf are given


@functools.lru_cache(maxsize=None)
def _has_ximgproc() -> bool:
    """Whether OpenCV has the contrib ximgproc filters. Without them refinement is skipped (it is an
    improvement, not a need), and that is said once per process so a broken install is not silent."""
    if hasattr(cv2, "ximgproc"):
        return True
    log.warning("OpenCV has no ximgproc (opencv-contrib-python-headless is not installed or is shadowed by "
                "another OpenCV package): edge-aware refinement is skipped and masks keep their upsampled edges")
    return False


def guided_refine(frames: np.ndarray, soft: np.ndarray, radius_frac: float = 0.02, eps: float = 1e-2) -> np.ndarray:
    """Refine soft masks (T,H,W) in [0,1] with their RGB frames (T,H,W,3) uint8 as guides.

    Radius 2% of the diagonal (20 px at 854x480) and eps 1e-2 were chosen on 4 DAVIS val sequences
    (blackswan, kite-surf, car-roundabout, dog): F +0.043, J +0.005 over plain upsampling; smaller
    radii or eps made F worse.
    """
    if not _has_ximgproc():
        return soft
    h, w = soft.shape[1:]
    radius = max(2, int(round(radius_frac * np.hypot(h, w))))
    out = np.empty_like(soft, dtype=np.float32)
    for t in range(len(soft)):
        guide = frames[t].astype(np.float32) / 255.0
        out[t] = cv2.ximgproc.guidedFilter(guide, soft[t].astype(np.float32), radius, eps)
    return np.clip(out, 0.0, 1.0)


def smoother_refine(frames: np.ndarray, soft: np.ndarray, lam: float = 300.0, sigma_color: float = 4.0,
                    lambda_attenuation: float = 0.25, iterations: int = 3) -> np.ndarray:
    """Refine soft masks (T,H,W) in [0,1] with the fast global smoother, RGB frames (T,H,W,3) uint8 as guides.

    ``lam`` (smoothness) is for an 854×480 frame and scales with the squared diagonal, because the
    smoother's reach grows with √λ pixels. ``sigma_color`` (0..255) is how small a colour step still
    stops the smoothing. λ 300 and σ 4 were chosen on DAVIS 2016 val (RAFT-small, no CRF) among λ
    30-1000 and σ 2-16: J 0.621 / F 0.588 there. On 6 of its sequences (λ 100) σ 8 leaks across weak
    edges (F 0.492) and σ 2 stops at texture (F 0.504), against σ 4's 0.515.
    """
    if not _has_ximgproc():
        return soft
    h, w = soft.shape[1:]
    scaled = lam * (float(np.hypot(h, w)) / REFERENCE_DIAGONAL) ** 2
    out = np.empty_like(soft, dtype=np.float32)
    for t in range(len(soft)):
        out[t] = cv2.ximgproc.fastGlobalSmootherFilter(np.ascontiguousarray(frames[t]), soft[t].astype(np.float32),
                                                       scaled, sigma_color, lambda_attenuation, iterations)
    return np.clip(out, 0.0, 1.0)
