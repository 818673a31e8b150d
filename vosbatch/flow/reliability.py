"""Flow-quality masks: which flow vectors can be trusted (globalopt's warp terms skip the others).

Two standard tests, both vectorised over whole clips:

* photometric (brightness constancy): warp frame t+1 back onto frame t with the forward flow and
  compare; the worst ``100 - percentile`` % of pixels of each frame, and pixels whose match falls
  outside the image, are unreliable (occlusions, flow errors, specularities);
* forward-backward consistency (Sundaram, Brox & Keutzer, ECCV 2010): following the forward flow
  and then the backward flow should return to the start,
  ``|f(x) + b(x+f(x))|^2 < alpha (|f(x)|^2 + |b(x+f(x))|^2) + beta``; violations mark occlusions
  and errors. The bound grows with the motion because large flows are less accurate.

Masks are boolean, True = reliable, shape (T-1, H, W), for the forward flow (on frames 0..T-2) and
the backward flow (on frames 1..T-1).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from ..ops.warp import backward_warp, photometric_error, sampling_grid
from .base import BidirectionalFlow

_GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY


@dataclass
class FlowReliability:
    forward: np.ndarray  # (T-1, H, W) bool: forward[t] reliable on frame t
    backward: np.ndarray  # (T-1, H, W) bool: backward[t] reliable on frame t+1

    def fraction(self) -> float:
        """Share of reliable flow vectors over both directions."""
        return float((self.forward.mean() + self.backward.mean()) / 2)


def _check(frames: np.ndarray, flow: BidirectionalFlow) -> None:
    if frames.ndim != 4 or flow.forward.shape[:3] != (frames.shape[0] - 1, *frames.shape[1:3]):
        raise ValueError(
            f"frames {frames.shape} and flow {flow.forward.shape} do not match: need (T,H,W,3) and (T-1,H,W,2)"
        )


def _images(frames: np.ndarray, grey: bool) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 3, 1, 2)  # (T,3,H,W), 0..255
    if grey:
        x = torch.einsum("tchw,c->thw", x, x.new_tensor(_GREY)).unsqueeze(1)
    return x


def _flow(f: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))


def photometric_errors(
    frames: np.ndarray, flow: BidirectionalFlow, grey: bool = True, chunk: int = 16
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel warping error (mean |difference| over channels, grey levels 0..255).

    Returns ``(err_fwd, err_bwd, inside_fwd, inside_bwd)``, each (T-1,H,W): ``err_fwd[t]`` compares
    frame t with frame t+1 warped by ``forward[t]``; ``inside`` is False where the match point lies
    outside the image (the error there is meaningless).
    """
    _check(frames, flow)
    images = _images(frames, grey)
    out = [[], [], [], []]
    for s in range(0, len(flow.forward), chunk):
        e = min(s + chunk, len(flow.forward))
        cur, nxt = images[s:e], images[s + 1 : e + 1]
        for k, (src, dst, f) in enumerate(((nxt, cur, flow.forward[s:e]), (cur, nxt, flow.backward[s:e]))):
            f = _flow(f)
            out[k].append(photometric_error(src, dst, f))
            out[k + 2].append((sampling_grid(f).abs() <= 1.0).all(dim=-1))  # as backward_warp's valid
    return tuple(torch.cat(o).numpy() for o in out)  # type: ignore[return-value]


def _below_percentile(err: np.ndarray, valid: np.ndarray, percentile: float) -> np.ndarray:
    """valid & err <= the per-frame percentile of err over valid pixels (vectorised over frames)."""
    masked = np.where(valid, err, np.nan).reshape(len(err), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frame: every match outside
        thr = np.nanpercentile(masked, percentile, axis=1)
    return valid & (err <= thr[:, None, None])


def photometric_reliability(
    frames: np.ndarray, flow: BidirectionalFlow, percentile: float = 90.0, grey: bool = True
) -> FlowReliability:
    """Pixels whose warping error exceeds the per-frame ``percentile`` are unreliable, as are pixels
    matched outside the image. ``grey=False`` compares RGB (mean over channels)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    ef, eb, vf, vb = photometric_errors(frames, flow, grey=grey)
    return FlowReliability(_below_percentile(ef, vf, percentile), _below_percentile(eb, vb, percentile))


def consistency_reliability(
    flow: BidirectionalFlow, alpha: float = 0.01, beta: float = 0.5, chunk: int = 16
) -> FlowReliability:
    """Forward-backward check of Sundaram et al. (defaults 0.01, 0.5), for both directions.

    A vector whose target lies outside the image has no partner to check against: unreliable.
    """
    masks = ([], [])
    for s in range(0, len(flow.forward), chunk):
        fwd, bwd = _flow(flow.forward[s : s + chunk]), _flow(flow.backward[s : s + chunk])
        for k, (f, b) in enumerate(((fwd, bwd), (bwd, fwd))):
            b_at, inside = backward_warp(b.permute(0, 3, 1, 2), f)  # b(x + f(x)), (N,2,H,W)
            b_at = b_at.permute(0, 2, 3, 1)
            lhs = (f + b_at).square().sum(-1)
            rhs = alpha * (f.square().sum(-1) + b_at.square().sum(-1)) + beta
            masks[k].append(((lhs < rhs) & (inside[:, 0] > 0.5)).numpy())
    return FlowReliability(np.concatenate(masks[0]), np.concatenate(masks[1]))

