"""Per-frame spectral bipartition by power iteration (PIC) on a feature + motion affinity.

Implements the initialisation of Ponimatkin et al. (WACV 2023), Sec. 3.1: nodes are the cells of
a coarse grid, the affinity mixes appearance ψ and forward/backward motion φ⁺, φ⁻ by cosine
similarity,

    A_ij = g_s( (α_ψ⟨ψ_i,ψ_j⟩ + α_φ(⟨φ⁺_i,φ⁺_j⟩ + ⟨φ⁻_i,φ⁻_j⟩)) / (α_ψ + 2α_φ) ),        (2)

g_s zeroing values below s, and the object is read off the second eigenvector of W = D⁻¹A.
Unreliable or missing flow takes no part: its term drops out of both the sum and the normaliser
for that pair (zero flow would claim "static" and vote wrongly).

The second eigenvector of W is D^-1/2 u₂ where u₂ is the second eigenvector of the symmetric
S = D^-1/2 A D^-1/2, whose leading eigenvector is known in closed form (u₁ ∝ D^1/2 1). We power-
iterate the shifted (S + I)/2 (spectrum in [0, 1], so the largest eigenvalue wins) while projecting
out u₁, stopping when the direction stops changing or at a cap.

The second eigenvalue λ₂ of S also says how cleanly the frame splits: 1 − λ₂ is the relaxed normalised
cut (Shi & Malik, PAMI 2000, Sec. 2), near 0 when two groups of nodes barely connect, near 1 when no
split separates anything; the quality estimate reads it (vosbatch.quality).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class PICResult:
    vectors: torch.Tensor  # (B, N) second eigenvectors of D^-1 A, unit norm
    iterations: torch.Tensor  # (B,) iterations used
    converged: torch.Tensor  # (B,) bool
    eigenvalues: torch.Tensor  # (B,) λ₂ of S (= of D⁻¹A): the Rayleigh quotient of the returned vector


def _unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def affinity(
    psi: torch.Tensor,
    phi_next: torch.Tensor,
    phi_prev: torch.Tensor,
    reliable_next: torch.Tensor,
    reliable_prev: torch.Tensor,
    alpha_psi: float = 1.0,
    alpha_phi: float = 1.0,
    s: float = 0.0,
    floor: float = 0.0,
) -> torch.Tensor:
    """Dense per-frame affinity, Eq. (2), for a batch of frames: (B,N,·) -> (B,N,N) float32.

    ``reliable_*`` (B,N) in [0,1] weight the motion terms of each node (0: missing/unreliable). Values
    below ``s`` become ``floor`` (g_s; the authors' code keeps a tiny 1e-6 there instead of cutting the edge).
    The numerator is one Gram matrix of the stacked, weighted features (r_i r_j⟨φ_i,φ_j⟩ =
    ⟨r_iφ_i, r_jφ_j⟩), the pairwise normaliser another of the stacked weights, so only two N×N
    matrices exist at any time and the result is thresholded in place.
    """
    psi, phi_next, phi_prev = _unit(psi.float()), _unit(phi_next.float()), _unit(phi_prev.float())
    rn = reliable_next.float()[..., None]
    rp = reliable_prev.float()[..., None]
    sa, sp = alpha_psi ** 0.5, alpha_phi ** 0.5
    stacked = torch.cat([sa * psi, sp * rn * phi_next, sp * rp * phi_prev], dim=-1)
    a = torch.bmm(stacked, stacked.transpose(1, 2))
    weights = torch.cat([torch.full_like(rn, sa), sp * rn, sp * rp], dim=-1)
    den = torch.bmm(weights, weights.transpose(1, 2))  # α_ψ + α_φ(r⁺_i r⁺_j + r⁻_i r⁻_j)
    a.div_(den.clamp_min_(1e-12))
    del den
    a.masked_fill_(a < s, floor)
    return a.clamp_min_(0.0)


def second_eigenvector(
    a: torch.Tensor,
    start: Optional[torch.Tensor] = None,
    tol: float = 1e-6,
    max_iter: int = 500,
    seed: int = 0,
) -> PICResult:
    """Second eigenvector of W = D⁻¹A for each affinity in the batch, by deflated power iteration.

    S = D^-1/2 A D^-1/2 is applied as D^-1/2 (A (D^-1/2 u)) and never formed. Each frame stops when
    its direction changes by less than ``tol`` (1 - |cos|) between iterations, all at ``max_iter``.
    """
    b, n, _ = a.shape
    deg = a.sum(-1).clamp_min(1e-8)
    dh = deg.sqrt()
    u1 = _unit(dh)
    if start is None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randn(b, n, generator=g, dtype=a.dtype).to(a.device)
    u = start.to(a.dtype) * dh  # to the symmetric problem's coordinates
    u = _unit(u - (u * u1).sum(-1, keepdim=True) * u1)
    iters = torch.zeros(b, dtype=torch.long, device=a.device)
    done = torch.zeros(b, dtype=torch.bool, device=a.device)
    for it in range(1, max_iter + 1):
        su = torch.bmm(a, (u / dh)[:, :, None])[:, :, 0] / dh
        nu = 0.5 * (su + u)
        nu = _unit(nu - (nu * u1).sum(-1, keepdim=True) * u1)
        change = 1.0 - (nu * u).sum(-1).abs()
        u = torch.where(done[:, None], u, nu)
        iters = torch.where(done, iters, torch.full_like(iters, it))
        done |= change < tol
        if bool(done.all()):
            break
    lam = (u * torch.bmm(a, (u / dh)[:, :, None])[:, :, 0] / dh).sum(-1)
    v = _unit(u / dh)
    return PICResult(v, iters, done, lam)


def _gap_thresholds(v: torch.Tensor, candidates: int) -> torch.Tensor:
    """Candidate split points (B, K): midpoints between consecutive sorted values of each row, at
    evenly spaced ranks, so every candidate separates nodes cleanly instead of sitting on one."""
    n = v.shape[-1]
    k = min(candidates, n - 1)
    ranks = torch.linspace(1, n - 1, k).round().long().unique()
    srt = v.sort(dim=-1).values
    return 0.5 * (srt[:, ranks - 1] + srt[:, ranks])


def motion_split_threshold(v: torch.Tensor, saliency: torch.Tensor, candidates: int = 128) -> torch.Tensor:
    """Split point along each eigenvector that best separates moving from static nodes.

    Sweeps thresholds (quantiles of v) and keeps the one maximising Otsu's between-class variance
    of the motion saliency, w₀w₁(μ₀-μ₁)²: the eigenvector decides which nodes belong together, the
    motion decides where the object ends.
    """
    taus = _gap_thresholds(v, candidates)  # (B, K)
    x = (v[:, :, None] > taus[:, None, :]).to(v.dtype)  # (B, N, K)
    sal = saliency.to(v.dtype)[:, :, None]
    w1 = x.mean(1)
    w0 = 1 - w1
    mu1 = (x * sal).sum(1) / x.sum(1).clamp_min(1)
    mu0 = ((1 - x) * sal).sum(1) / (1 - x).sum(1).clamp_min(1)
    score = w0 * w1 * (mu1 - mu0) ** 2
    return taus.gather(1, score.argmax(-1, keepdim=True))[:, 0]


def bipartition_soft(
    v: torch.Tensor,
    saliency: torch.Tensor,
    border: torch.Tensor,
    sharpness: float = 3.0,
) -> torch.Tensor:
    """Soft foreground mask from eigenvectors (B,N), choosing the object side robustly.

    The split point best separates moving from static nodes (:func:`motion_split_threshold`). The
    object is the side that moves more against the background (mean motion
    ``saliency``); when the sides move alike, the side touching the image ``border`` (bool (N,))
    less. Size is deliberately not used: objects can fill the frame.
    """
    vs = v / v.std(dim=-1, keepdim=True).clamp_min(1e-12)
    tau = motion_split_threshold(vs, saliency)
    pos = vs > tau[:, None]

    def side_mean(x, m):
        return (x * m).sum(-1) / m.sum(-1).clamp_min(1)

    sal_pos, sal_neg = side_mean(saliency, pos.float()), side_mean(saliency, (~pos).float())
    bor_pos = side_mean(border.float()[None].expand_as(pos), pos.float())
    bor_neg = side_mean(border.float()[None].expand_as(pos), (~pos).float())
    contrast = (sal_pos - sal_neg) / (sal_pos + sal_neg).clamp_min(1e-6)
    by_motion = contrast.abs() > 0.1
    pos_is_fg = torch.where(by_motion, contrast > 0, bor_pos < bor_neg)
    sign = torch.where(pos_is_fg, 1.0, -1.0).to(v.dtype)
    return torch.sigmoid(sharpness * sign[:, None] * (vs - tau[:, None]))
