"""Edge-aware refinement of soft masks with the frame as guide (OpenCV ximgproc).

Masks optimised on a coarse grid and upsampled bilinearly have blurry, blocky edges that ignore the
image. The **fast global smoother** (Min et al., TIP 2014; before the CRF, or alone with ``--refine
fgs``) makes them follow the frame: a weighted-least-squares fit that stays close to the mask while
smoothing it everywhere *except* across colour edges, so probability spreads along an object up to
its outline and stops there.
"""
from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

from ..ops.parallel import thread_map

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


def smoother_refine(frames: np.ndarray, soft: np.ndarray, lam: float = 300.0, sigma_color: float = 4.0,
                    lambda_attenuation: float = 0.25, iterations: int = 3) -> np.ndarray:
    """Refine soft masks (T,H,W) in [0,1] with the fast global smoother, RGB frames (T,H,W,3) uint8 as guides.

    ``lam`` (smoothness) is for an 854×480 frame and scales with the squared diagonal, because the
    smoother's reach grows with √λ pixels. ``sigma_color`` (0..255) is how small a colour step still
    stops the smoothing (both chosen on DAVIS 2016 val, docs/methods.md).
    """
    if not _has_ximgproc():
        return soft
    h, w = soft.shape[1:]
    scaled = lam * (float(np.hypot(h, w)) / REFERENCE_DIAGONAL) ** 2
    out = np.empty_like(soft, dtype=np.float32)

    def one(t: int) -> None:  # OpenCV releases the GIL: frames run in the actor's threads
        out[t] = cv2.ximgproc.fastGlobalSmootherFilter(np.ascontiguousarray(frames[t]), soft[t].astype(np.float32),
                                                       scaled, sigma_color, lambda_attenuation, iterations)

    thread_map(one, range(len(soft)))
    return np.clip(out, 0.0, 1.0)

