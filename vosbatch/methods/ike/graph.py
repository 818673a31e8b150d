"""Space-time graph of IKE (Haller, Florea, Leordeanu, TPAMI): one node per pixel, edges along flow chains.

The Feature-Motion matrix of the paper is ``A = P·M·P``:

* **M** (motion structure). From every pixel, follow the forward flow and the backward flow frame
  by frame for up to ``p`` steps; the pixel and each pixel its chain reaches at temporal distance
  k are joined by an edge of weight ``g(k) = exp(-k² / 2σ²)``. The authors build M explicitly
  (~10 GB of edges for 80 frames). Here M is never stored: one chain step of a whole video is a
  bilinear warp of every frame (``S_f``: pull frame t+1's values to the chain positions of frame
  t's pixels; ``S_b`` the same with the backward flow), so

      R = Σ_{k=1..p} g(k) (S_f^k + S_b^k),     M = I + ½ (R + Rᵀ),                         (M)

  where Rᵀ is the exact adjoint of the bilinear warp (each pixel *sends* its value along the
  chain as well as receiving). M is symmetric and non-negative, memory is O(frames × pixels).
* **P** (feature projection). Every node has a feature vector F_i; ``P x = F (FᵀF + αI)⁻¹ Fᵀ x``
  is the ridge-regression fit of x by the features (α the regulariser: official 100, which is
  negligible against FᵀF ~ N for unit-RMS features; the method sets α per node, ``IkeConfig.ridge``).

The segmentation is the leading eigenvector of A, found by power iteration without building A:
``x ← M x; x ← P x; x ← x / ‖x‖`` from a seeded random start, until it stops changing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...flow.base import resize_flow
from ...ops.warp import sampling_grid
from ...progress import report

_BILINEAR, _ZEROS = 0, 0  # grid_sampler enum values: interpolation mode, padding mode


class ChainWarper:
    """One chain step of a whole video on an (h,w) grid, in both flow directions, and its adjoint.

    ``forward``/``backward``: flows (T-1,h,w,2) in pixels of this grid. A chain that leaves the
    image or the video ends there (zero padding): its node has no edge beyond that point.
    """

    def __init__(self, forward: np.ndarray, backward: np.ndarray, dtype=torch.float32,
                 device: torch.device = torch.device("cpu")) -> None:
        self.dtype = dtype
        self.grid_f = sampling_grid(torch.from_numpy(np.ascontiguousarray(forward)).to(device, dtype))  # on frame t, into t+1
        self.grid_b = sampling_grid(torch.from_numpy(np.ascontiguousarray(backward)).to(device, dtype))  # on frame t+1, into t
        self.frames = forward.shape[0] + 1

    @staticmethod
    def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    @staticmethod
    def _sample_adjoint(y: torch.Tensor, grid: torch.Tensor, shape) -> torch.Tensor:
        """Exact transpose of :meth:`_sample`: every target pixel sends its value back to the four
        source pixels it was interpolated from, with the same bilinear weights."""
        zeros = torch.zeros(shape, dtype=y.dtype, device=y.device)
        grad_in, _ = torch.ops.aten.grid_sampler_2d_backward(y, zeros, grid, _BILINEAR, _ZEROS, True, [True, False])
        return grad_in

    def pull_next(self, x: torch.Tensor) -> torch.Tensor:
        """S_f x: frame t receives frame t+1's values at its pixels' forward chain positions. x (T,C,h,w)."""
        out = torch.zeros_like(x)
        out[:-1] = self._sample(x[1:], self.grid_f)
        return out

    def pull_prev(self, x: torch.Tensor) -> torch.Tensor:
        """S_b x: frame t+1 receives frame t's values at its pixels' backward chain positions."""
        out = torch.zeros_like(x)
        out[1:] = self._sample(x[:-1], self.grid_b)
        return out

    def push_next(self, y: torch.Tensor) -> torch.Tensor:
        """S_fᵀ y: frame t's pixels send their values to frame t+1 (adjoint of :meth:`pull_next`)."""
        out = torch.zeros_like(y)
        out[1:] = self._sample_adjoint(y[:-1], self.grid_f, y[1:].shape)
        return out

    def push_prev(self, y: torch.Tensor) -> torch.Tensor:
        """S_bᵀ y (adjoint of :meth:`pull_prev`)."""
        out = torch.zeros_like(y)
        out[:-1] = self._sample_adjoint(y[1:], self.grid_b, y[:-1].shape)
        return out


def chain_weights(p: int, sigma: float) -> List[float]:
    """g(k) = exp(-k²/2σ²), k = 0..p: edge weight between nodes k frames apart on one chain."""
    return [math.exp(-(k * k) / (2.0 * sigma * sigma)) for k in range(p + 1)]


def propagate(x: torch.Tensor, warper: ChainWarper, p: int, sigma: float) -> torch.Tensor:
    """M x, Eq. (M), by chaining whole-frame warps: p steps along each direction, never storing M.

    x (T,C,h,w). The adjoint (sending) chains are added to the receiving ones, which makes M exactly
    symmetric (needed for the power iteration to have a real leading eigenvector to converge to).
    """
    g = chain_weights(p, sigma)
    out = g[0] * x
    steps = [(warper.pull_next, 0.5), (warper.pull_prev, 0.5), (warper.push_next, 0.5), (warper.push_prev, 0.5)]
    for step, scale in steps:
        y = x
        for k in range(1, p + 1):
            y = step(y)
            out = out + (scale * g[k]) * y
    return out


def along_chain(maps: torch.Tensor, warper: ChainWarper, q: int) -> torch.Tensor:
    """Per-frame maps (T,C,h,w) collected along each pixel's chain over 2q+1 frames.

    Returns (T, C·(2q+1), h, w): for offsets -q..q, the map of frame t+k at the chain position of
    the pixel (0 where the chain has ended). These are the node features of the paper (collected
    along the motion chains). Written into one preallocated tensor: the feature tensor is the
    largest array of the method and must exist only once.
    """
    t_len, c, h, w = maps.shape
    out = torch.zeros((t_len, c * (2 * q + 1), h, w), dtype=maps.dtype, device=maps.device)
    out[:, q * c:(q + 1) * c] = maps
    for sign in (1, -1):
        for k in range(1, q + 1):
            prev = out[:, (q + sign * (k - 1)) * c:(q + sign * (k - 1) + 1) * c]
            dst = out[:, (q + sign * k) * c:(q + sign * k + 1) * c]
            if sign > 0:  # S_f applied to the previous offset, written in place (one temporary)
                dst[:-1] = warper._sample(prev[1:], warper.grid_f)
            else:
                dst[1:] = warper._sample(prev[:-1], warper.grid_b)
    return out


def feature_weights(channel_weights: torch.Tensor, q: int, sigma: float) -> torch.Tensor:
    """Column weights for :func:`along_chain`'s features (offsets -q..q, the channels of one offset side by
    side): each channel's weight times g(|k|) of :func:`chain_weights` with σ = ``sigma`` (1 when ``sigma`` is
    0). A far offset's map was warped more times (its error grows with k), as a far chain edge joins more
    weakly in M."""
    g = chain_weights(q, sigma) if sigma > 0 else [1.0] * (q + 1)
    by_offset = torch.tensor([g[abs(k)] for k in range(-q, q + 1)], dtype=torch.float32)
    return (by_offset[:, None] * channel_weights.float()[None, :]).reshape(-1)


class FeatureProjection:
    """P x = F w, w = (FᵀF + αI)⁻¹ Fᵀ x: ridge regression of x on the node features (closed form).

    ``features`` (T,D,h,w) is used in place (scaled, never copied): node i = (t,y,x) has the
    feature vector features[t,:,y,x]. Each feature is scaled to unit RMS but not centred: 0 stays
    "no motion / no object", so no constant direction enters the span (with a constant feature the
    flat vector would be the leading eigenvector and carry no segmentation).
    ``weights`` (D,) then scales each feature: against a ridge of the size of FᵀF's diagonal, a feature's
    share of the span grows with its weight (a feature repeated twice counts as one with weight √2).
    """

    def __init__(self, features: torch.Tensor, alpha: float, weights: Optional[torch.Tensor] = None) -> None:
        t, d, h, w = features.shape
        self.features = features
        dev = features.device
        sq = torch.zeros(d, dtype=torch.float64, device=dev)
        for f in features:  # frame by frame: no (N,D) temporary
            sq += f.reshape(d, -1).double().pow(2).sum(1)
        scale = 1.0 / (sq / (t * h * w)).sqrt().clamp_min(1e-8)
        if weights is not None:
            scale = scale * weights.double().to(dev)
        features.mul_(scale.to(features.dtype)[None, :, None, None])
        gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
        for f in features:
            f2 = f.reshape(d, -1)
            gram += (f2 @ f2.T).double()
        gram += alpha * torch.eye(d, dtype=torch.float64, device=dev)
        self.solver = torch.linalg.cholesky(gram)
        self.shape = (t, 1, h, w)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        t, d = self.features.shape[:2]
        flat = self.features.view(t, d, -1)  # per-frame (D, pixels) blocks: batched matmul, no copy
        rhs = torch.bmm(flat, x.reshape(t, -1, 1).to(flat.dtype)).sum(0)[:, 0]
        return torch.cholesky_solve(rhs.double()[:, None], self.solver)[:, 0].to(self.features.dtype)

    def matrix(self) -> torch.Tensor:
        """F as an (N,D) matrix (a copy; for tests on tiny videos)."""
        return self.features.permute(0, 2, 3, 1).reshape(-1, self.features.shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t, d = self.features.shape[:2]
        return torch.matmul(self.weights(x)[None, :], self.features.view(t, d, -1)).reshape(self.shape)


@dataclass
class PowerResult:
    vector: torch.Tensor  # (T,1,h,w), unit norm
    iterations: int
    change: float  # ‖x_k - x_{k-1}‖ at the last iteration


def leading_eigenvector(
    warper: ChainWarper,
    projection: FeatureProjection,
    p: int,
    sigma: float,
    max_iter: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    start: Optional[torch.Tensor] = None,
) -> PowerResult:
    """Power iteration on A = P·M·P: x ← P(M x), normalised, from a seeded random start.

    Starting with a projection puts x in the range of P, where A and P·M agree. Stops when the
    change of the unit vector falls below ``tol`` or after ``max_iter`` iterations (official 20).
    """
    if start is None:
        gen = torch.Generator().manual_seed(seed)
        start = torch.rand(projection.shape, generator=gen).to(projection.features.device)
    x = projection(start)
    x = x / x.norm().clamp_min(1e-12)
    change = float("inf")
    it = 0
    for it in range(1, max_iter + 1):
        y = projection(propagate(x, warper, p, sigma))
        y = y / y.norm().clamp_min(1e-12)
        change = float((y - x).norm())
        x = y
        report("method", it / max_iter)
        if change < tol:
            break
    return PowerResult(x, it, change)


def grid_flow(forward: np.ndarray, backward: np.ndarray, hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    return resize_flow(forward, *hw), resize_flow(backward, *hw)
