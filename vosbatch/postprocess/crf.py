"""Fully connected CRF refinement (Krähenbühl & Koltun, NeurIPS 2011) through the ``crf`` extra.

Soft masks from a coarse grid are blurry at object edges. A dense CRF re-labels each pixel with an
energy that keeps the unary (our soft mask, as -log p) and adds two Potts kernels over all pixel
pairs: an *appearance* kernel (nearby pixels of similar colour take the same label) and a
*smoothness* kernel (removes isolated specks), solved by mean-field inference. Ponimatkin et al.
post-process their masks this way; the parameters below start from the DeepLab defaults (Chen et al.,
TPAMI 2018, as used by most dense-CRF post-processing since), with the spatial widths given for an
854×480 frame and scaled with the frame's diagonal so other resolutions behave alike. Two are
re-tuned for our unary, which the fast global smoother has already snapped to the image's edges
(DAVIS 2016 val, RAFT-small, fgs + CRF row): a shorter colour reach θ_α (40, not 67) stops the label
spreading into same-coloured background far away, and a weaker smoothness kernel w₂ (1, not 3) no
longer erodes thin parts the smoother kept: J 0.624 → 0.628, F 0.596 → 0.604, F up in 16 of 20
sequences.

``pydensecrf2`` (imports as ``pydensecrf``) is a dependency and builds from source (a C++ compiler); an
install without it fails ``--refine crf`` (the default) with a clear message naming the fix and the CRF-free
``--refine fgs`` (:mod:`vosbatch.postprocess.refine`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import cv2
import numpy as np

from ..errors import VosbatchError
from ..ops.parallel import chunks, cpu_workers, process_map
from ..progress import report
from .refine import REFERENCE_DIAGONAL  # the widths below are in pixels of that frame


class CRFUnavailable(VosbatchError):
    """``--refine crf`` (the default) was asked for but pydensecrf2 is not installed."""


@dataclass
class CRFParams:
    """Dense CRF parameters (DeepLab's, θ_α and w₂ re-tuned as above; widths in pixels of an 854×480 frame)."""

    iterations: int = 5  # mean-field steps; the labelling settles after ~5
    appearance_weight: float = 4.0  # w₁, bilateral (colour + position) Potts kernel
    appearance_xy_std: float = 40.0  # θ_α: how far colour similarity reaches (DeepLab: 67)
    appearance_rgb_std: float = 3.0  # θ_β: colour difference (0..255) that still counts as similar
    smoothness_weight: float = 1.0  # w₂, position-only Potts kernel (DeepLab: 3)
    smoothness_xy_std: float = 3.0  # θ_γ (DeepLab-v2's 3; θ_γ=1 builds a 30x slower lattice at 480p: 2.3 s/frame)
    confidence_floor: float = 1e-4  # probabilities are clipped to [floor, 1-floor] before -log
    # inference at most at this height, marginals upsampled back: 240 (the pipeline's working height)
    # is what the DAVIS table measured (guided + CRF: J +0.032, F +0.029 over no refinement with
    # RAFT-small); None runs at full size, ~4x slower (0.5 s per 480p frame on one core) and was
    # worse there (CRF alone on every third frame: J 0.598 / F 0.552 vs 0.606 / 0.573 at 240)
    max_height: int | None = 240


def crf_params(**overrides) -> CRFParams:
    """:class:`CRFParams` with some fields replaced (e.g. from ``--crf-param KEY=VALUE``); an unknown
    name is an error listing the known ones, not a silently ignored sweep."""
    known = {f.name for f in fields(CRFParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown CRF parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return replace(CRFParams(), **overrides)


def crf_available() -> bool:
    try:
        require_crf()
    except CRFUnavailable:
        return False
    return True


def require_crf():
    """pydensecrf's dense CRF module, or :class:`CRFUnavailable` saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise CRFUnavailable(
            "--refine crf (the default) needs pydensecrf2, a dependency of vosbatch that builds from source with a "
            "C++ compiler: pip install pydensecrf2; or choose --refine fgs (the smoother alone, no CRF)"
        ) from exc
    return dcrf


def crf_refine(frames: np.ndarray, prob: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Foreground marginals (T,H,W) float32 after dense-CRF inference on each frame.

    ``frames`` (T,H,W,3) uint8 RGB, ``prob`` (T,H,W) foreground probabilities at the same size,
    calibrated so that 0.5 is the decision boundary (the CRF's labels are its argmax). The frames are
    independent: with several CPUs (:mod:`vosbatch.ops.parallel`) they run in worker processes.
    """
    require_crf()
    if frames.shape[:3] != prob.shape:
        raise ValueError(f"frames {frames.shape[:3]} and masks {prob.shape} differ in size")
    p = params or CRFParams()
    parts = chunks(len(prob), cpu_workers())
    if len(parts) == 1:
        return _crf_frames((frames, prob, p))
    out = np.empty(prob.shape, np.float32)
    for sl, q in zip(parts, process_map(_crf_frames, [(frames[sl], prob[sl], p) for sl in parts])):
        out[sl] = q
    report("binarize", 1.0)
    return out


def _crf_frames(job) -> np.ndarray:
    frames, prob, p = job
    dcrf = require_crf()
    t_len, h, w = prob.shape
    ih, iw = h, w
    if p.max_height and h > p.max_height:  # the lattice costs grow with the pixel count
        ih, iw = p.max_height, max(2, int(round(w * p.max_height / h)))
    scale = float(np.hypot(ih, iw)) / REFERENCE_DIAGONAL
    out = np.empty((t_len, h, w), np.float32)
    for t in range(t_len):
        img, fg = frames[t], prob[t].astype(np.float32)
        if (ih, iw) != (h, w):
            img = cv2.resize(img, (iw, ih), interpolation=cv2.INTER_AREA)
            fg = cv2.resize(fg, (iw, ih), interpolation=cv2.INTER_AREA)
        fg = np.clip(fg, p.confidence_floor, 1 - p.confidence_floor)
        unary = -np.log(np.stack([1 - fg, fg]).reshape(2, -1))
        crf = dcrf.DenseCRF2D(iw, ih, 2)
        crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
        crf.addPairwiseGaussian(sxy=max(p.smoothness_xy_std * scale, 0.5), compat=p.smoothness_weight)
        crf.addPairwiseBilateral(sxy=max(p.appearance_xy_std * scale, 1.0), srgb=p.appearance_rgb_std,
                                 rgbim=np.ascontiguousarray(img, np.uint8), compat=p.appearance_weight)
        q = np.asarray(crf.inference(p.iterations), np.float32).reshape(2, ih, iw)[1]
        out[t] = q if (ih, iw) == (h, w) else cv2.resize(q, (w, h), interpolation=cv2.INTER_LINEAR)
        report("binarize", (t + 1) / t_len)
    return out
