"""Object motion = flow minus the camera's motion.

Camera motion dominates raw flow, so the flow of the background is modelled by a homography
fitted with RANSAC to each flow field (a plane-induced motion: exact for rotation/zoom and a fair
approximation for distant scenes), and the *residual* flow is what moves on its own. Where the
background has depth, a second homography models a second static layer (:func:`background_layers`),
and :func:`independent_motion` measures each pixel against the camera's epipolar geometry.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np


def _background_samples(h: int, w: int, n: int, rng: np.random.Generator, band: float = 0.15):
    """Sample points for the background fit, two thirds from the image's border band.

    The camera's motion is the motion of whatever dominates the frame's border: objects are framed
    away from the edges, while they may well cover most of the frame (then a uniform sample would
    fit the homography to the object and call the background "moving").
    """
    b = max(1, int(round(band * min(h, w))))
    n_band = 2 * n // 3
    side = rng.integers(0, 4, n_band)
    along = rng.random(n_band)
    depth = rng.integers(0, b, n_band)
    ys = np.where(side == 0, depth, np.where(side == 1, h - 1 - depth, (along * (h - 1)).astype(int)))
    xs = np.where(side == 2, depth, np.where(side == 3, w - 1 - depth, (along * (w - 1)).astype(int)))
    ys = np.concatenate([ys, rng.integers(0, h, n - n_band)])
    xs = np.concatenate([xs, rng.integers(0, w, n - n_band)])
    return ys, xs


def _background_pairs(flow: np.ndarray, samples: int, rng: np.random.Generator):
    """Correspondences p -> p + flow(p) at the background sample: (src, dst) float32 (n,2), and (ys, xs)."""
    ys, xs = _background_samples(*flow.shape[:2], samples, rng)
    src = np.stack([xs, ys], -1).astype(np.float32)
    return src, src + flow[ys, xs], (ys, xs)


def _fit_homography(src: np.ndarray, dst: np.ndarray, threshold: float) -> np.ndarray:
    H, _ = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=500, confidence=0.995)
    if H is None or not np.all(np.isfinite(H)):
        return np.eye(3)
    return H


def _pixel_grid(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs, ys], -1)


def _homography_residual(flow: np.ndarray, H: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """One flow field (H,W,2) minus the motion the homography H gives each pixel of ``grid`` (H,W,2)."""
    moved = cv2.perspectiveTransform(grid.reshape(-1, 1, 2), H).reshape(grid.shape)
    return flow - (moved - grid)


def residual_flow(flow: np.ndarray, layers: int = 1, samples: int = 1500, threshold: float = 1.0,
                  seed: int = 0) -> np.ndarray:
    """Flow (N,H,W,2) minus each field's background motion.

    ``layers=1``: the background homography's motion. ``layers=2``: where the background has depth
    (:func:`background_layers`), each pixel's flow minus the nearer of the two layers' motions, so the
    parallax of a second static depth layer is not taken for motion, whichever layer RANSAC fits first.
    """
    if layers not in (1, 2):
        raise ValueError(f"residual_flow layers={layers!r}: choose 1 or 2")
    out = np.empty_like(flow, dtype=np.float32)
    grid = _pixel_grid(*flow.shape[1:3])
    for i, f in enumerate(flow):
        homographies = background_layers(f, samples, threshold, np.random.default_rng(seed), max_layers=layers)
        res = [_homography_residual(f, H, grid) for H in homographies]
        out[i] = res[0] if len(res) == 1 else np.where(
            (np.linalg.norm(res[1], axis=-1) < np.linalg.norm(res[0], axis=-1))[..., None], res[1], res[0])
    return out


def per_frame_motion(forward_residual: np.ndarray, backward_residual: np.ndarray):
    """Per-pair maps (T-1,H,W,C) attached to frames: (T,H,W,C) towards the next and the previous frame.

    Frame t's "next" residual is forward[t] (t->t+1), its "previous" is backward[t-1] (t->t-1).
    The first frame has no previous and the last no next; those entries are NaN so callers must
    treat them as missing rather than as "static".
    """
    t1, h, w, c = forward_residual.shape
    nxt = np.full((t1 + 1, h, w, c), np.nan, np.float32)
    prv = np.full((t1 + 1, h, w, c), np.nan, np.float32)
    nxt[:-1] = forward_residual
    prv[1:] = backward_residual
    return nxt, prv


def frame_motion(forward: np.ndarray, backward: np.ndarray, seed: int = 0, layers: int = 1):
    """Object motion attached to frames, as :func:`per_frame_motion`: the flow minus the camera's
    (:func:`residual_flow`), NaN where there is no next/previous frame."""
    forward, backward = (residual_flow(f, layers=layers, seed=seed) for f in (forward, backward))
    return per_frame_motion(forward, backward)


def motion_saliency(nxt: np.ndarray, prv: np.ndarray) -> np.ndarray:
    """Per-frame residual magnitude, min over the two directions (an occlusion hurts only one)."""
    mn = np.linalg.norm(nxt, axis=-1)
    mp = np.linalg.norm(prv, axis=-1)
    return np.fmin(mn, mp)  # fmin ignores the NaN of the missing direction


def _epipolar_line_distance(F: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Distance (pixels) of q from the epipolar line F p of its source p (..., 3 homogeneous).

    Not the symmetric Sampson distance: in a flow field the source p is an exact pixel and the error is
    all in the target q, as in the homography's residual |q - Hp|; with both measured in q, GRIC
    compares like with like (the Sampson distance is ~1/√2 of this for small motion, and made F look
    twice as likely as it is)."""
    line = p @ F.T
    return np.abs(np.einsum("...c,...c->...", q, line)) / np.sqrt(np.maximum(line[..., 0] ** 2 + line[..., 1] ** 2, 1e-12))


def _gric(sq_err: np.ndarray, sigma: float, manifold_dim: int, params: int) -> float:
    """Torr's Geometric Robust Information Criterion of a two-view model (data dimension 4): robust residual
    cost plus penalties for the manifold's dimension and the model's parameters; the lower, the better."""
    n, r = sq_err.size, 4
    return float(np.minimum(sq_err / sigma ** 2, 2.0 * (r - manifold_dim)).sum() + np.log(r) * manifold_dim * n
                 + np.log(r * n) * params)


def independent_motion(flow: np.ndarray, samples: int = 1500, threshold: float = 1.0, seed: int = 0,
                       sigma: Optional[float] = None) -> np.ndarray:
    """Per-pixel distance (pixels) of each flow vector from the background's two-view geometry.

    A homography removes the camera's rotation and a distant scene's motion, but a near static surface
    still moves against it (parallax). Static points, near or far, satisfy x'ᵀ F x = 0 for the camera's
    fundamental matrix F (fitted by RANSAC to the background sample, as the homography); what moves
    on its own does not, unless it happens to move along its epipolar line. F is only determined when
    the background has depth: on a planar or distant background (or a rotating camera) every F of the
    form [e']ₓH fits it, and RANSAC picks the e' that also fits the object. So the model is chosen per
    frame pair by GRIC (Torr 1998): the distance from the epipolar line of F where F explains the background
    better than H; elsewhere NaN (no distance beyond what the homography's residual already says: the
    homography's residual there would be a second near-flat noise channel beside the saliency).
    (N,H,W,2) -> (N,H,W).
    """
    n, h, w = flow.shape[:3]
    grid = _pixel_grid(h, w)
    p = np.concatenate([grid, np.ones((h, w, 1), np.float32)], -1).astype(np.float64)
    out = np.full((n, h, w), np.nan, np.float32)
    rng = np.random.default_rng(seed)
    for i, f in enumerate(flow):
        src, dst, sample = _background_pairs(f, samples, rng)
        H = _fit_homography(src, dst, threshold)
        F, _ = _epipolar_model(f, src, dst, sample, _homography_error(src, dst, H), threshold, sigma)
        if F is not None:
            out[i] = _epipolar_line_distance(F, p, np.concatenate([p[..., :2] + f, p[..., 2:]], -1))
    return out


def _homography_error(src: np.ndarray, dst: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Distance (pixels) of each correspondence's target from where the homography H maps its source."""
    return np.linalg.norm(dst - cv2.perspectiveTransform(src[:, None], H)[:, 0], axis=-1)


def _epipolar_model(f: np.ndarray, src: np.ndarray, dst: np.ndarray, sample, h_err: np.ndarray, threshold: float,
                    sigma: Optional[float] = None):
    """The background's fundamental matrix F where GRIC (Torr 1998) says F explains the background sample
    better than the homography (its errors ``h_err`` on the sample): the background has depth; else None.
    And the sample's distances from their epipolar lines (None without F)."""
    F, _ = cv2.findFundamentalMat(src, dst, cv2.FM_RANSAC, threshold, 0.995, 500)
    if F is None or F.shape != (3, 3) or not np.all(np.isfinite(F)):
        return None, None  # no fit (degenerate sample)
    sy, sx = sample
    p_sample = np.concatenate([src, np.ones((len(src), 1), np.float32)], -1).astype(np.float64)
    q_sample = np.concatenate([p_sample[:, :2] + f[sy, sx], p_sample[:, 2:]], -1)
    f_err = _epipolar_line_distance(F, p_sample, q_sample)  # the model choice needs the sample only
    # the flow's noise σ, robustly from the general model's residuals on the sample (MAD), unless given
    noise = sigma if sigma is not None else max(0.05, 1.4826 * float(np.median(f_err)))
    if _gric(f_err ** 2, noise, 3, 7) < _gric(h_err ** 2, noise, 2, 8):
        return F, f_err
    return None, None


def background_layers(flow: np.ndarray, samples: int = 1500, threshold: float = 1.0,
                      rng: Optional[np.random.Generator] = None, max_layers: int = 2, min_share: float = 0.1) -> list:
    """The background's homographies, one per static depth layer: [H] or [H, H2] (``max_layers=2``).

    H is fitted by RANSAC to the background sample (:func:`_background_samples`) of p -> p + flow(p).

    A homography is one plane of the scene. When the background has depth (GRIC prefers F), a second
    layer (near rocks before a far hillside) moves against H, and which of the two RANSAC fits first
    depends on its sample, so the parallax left in the residual, and what a method segments, flip with
    the seed. H2 is fitted to the sample points that H leaves out but F keeps (static, since they
    satisfy the epipolar constraint: an object moving on its own does not, unless it moves along its
    epipolar lines), when they are at least ``min_share`` of the sample."""
    rng = rng if rng is not None else np.random.default_rng(0)
    src, dst, sample = _background_pairs(flow, samples, rng)
    H = _fit_homography(src, dst, threshold)
    if max_layers == 1:
        return [H]
    h_err = _homography_error(src, dst, H)
    F, f_err = _epipolar_model(flow, src, dst, sample, h_err, threshold)
    if F is None:
        return [H]
    second = (h_err > 2 * threshold) & (f_err < threshold)
    needed = max(8, min_share * len(src))  # points the second layer must hold, before and after its RANSAC
    if second.sum() < needed:
        return [H]
    H2, inl = cv2.findHomography(src[second], dst[second], cv2.RANSAC, threshold, maxIters=500, confidence=0.995)
    if H2 is None or not np.all(np.isfinite(H2)) or inl is None or inl.sum() < needed:
        return [H]
    return [H, H2]
