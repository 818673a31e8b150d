"""Global optimisation of soft masks over a whole video (Ponimatkin et al., WACV 2023).

1. Initialisation (Sec. 3.1): per frame, the second eigenvector of an appearance + motion affinity
   on a coarse grid (:mod:`vosbatch.ops.spectral`). Motion is the *residual* flow after removing
   the camera's homography, because camera motion dominates raw flow.
2. Optimisation (Sec. 3.2, Eq. 1): one objective over all frames,

       L = Σ_p λ·CE(x̂_p, x_p) + CE(x_{p+1}, w_{p→p+1}(x_p)) + CE(x_p, w_{p+1→p}(x_{p+1})),   (1)

   x_p = σ(z_p) the soft mask of frame p, x̂_p its initialisation, w_{a→b} backward warping of a
   mask from frame a onto frame b (sample at q + flow_{b→a}(q)), CE(a, b) = -Σ a log b +
   (1-a) log(1-b). Minimised with L-BFGS over the logits z in float64 with a summed loss, so the
   stopping tests see real changes (a float32 mean-normalised loss stops after ~2 iterations).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..flow.base import resize_flow
from ..ops.motion import motion_saliency, per_frame_motion, residual_flow
from ..ops.spectral import affinity, bipartition_soft, second_eigenvector
from ..ops.warp import backward_warp
from .base import MethodInput, MethodOutput, register_method


@dataclass
class GlobalOptConfig:
    grid_stride: int = 8  # working pixels per spectral-grid cell
    opt_stride: int = 4  # working pixels per optimisation-grid cell
    alpha_psi: float = 0.1  # appearance weight in Eq. (2): colour is a weak cue without learned features
    alpha_phi: float = 1.0  # motion weight in Eq. (2)
    affinity_threshold: float = 0.0  # s in g_s
    motion_scale: float = 4.0  # constant third component of motion features, in units of the frame's residual noise
    pic_tol: float = 1e-6
    pic_max_iter: int = 400
    pic_batch: int = 8  # frames per batched eigen-solve (bounds memory)
    sharpness: float = 3.0  # slope of the soft init around the split
    split: str = "motion"  # where to cut the eigenvector: "motion" (Otsu on saliency), "ncut" sweep, "2means"
    lam: float = 1.0  # λ in Eq. (1)
    lbfgs_max_iter: int = 100
    optimise: bool = True
    seed: int = 0


def feature_grid(work_hw: Tuple[int, int], cfg: GlobalOptConfig) -> Tuple[int, int]:
    return max(2, work_hw[0] // cfg.grid_stride), max(2, work_hw[1] // cfg.grid_stride)


def _to_grid(x: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Area-average (T,H,W[,C]) maps onto an (h,w) grid, ignoring NaNs cell by cell."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if t.ndim == 3:
        t = t[..., None]
    t = t.permute(0, 3, 1, 2)
    finite = torch.isfinite(t).float()
    num = F.adaptive_avg_pool2d(torch.nan_to_num(t), hw)
    den = F.adaptive_avg_pool2d(finite, hw)
    out = num / den.clamp_min(1e-6)
    out[den < 0.5] = float("nan")
    return out.permute(0, 2, 3, 1).numpy()


def _motion_features(res: np.ndarray, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """φ = [r_x, r_y, c] per node: static background is ≈ (0,0,c) and all alike; moving parts
    differ from it by their residual speed and from each other by direction. c is ``scale`` times
    the frame's residual noise level (median magnitude), so "moving" means moving clearly more than
    the background's own flow error, whatever the resolution or flow quality. Returns (φ, present)."""
    present = np.isfinite(res).all(-1)
    r = np.nan_to_num(res)
    mag = np.linalg.norm(r, axis=-1)
    noise = np.array([np.median(m[p]) if p.any() else 1.0 for m, p in zip(mag, present)], np.float32)
    c = np.broadcast_to((scale * (noise + 0.05))[:, None, None, None], r.shape[:-1] + (1,))
    return np.concatenate([r, c], -1).astype(np.float32), present


def initial_masks(inp: MethodInput, cfg: GlobalOptConfig) -> Tuple[np.ndarray, dict]:
    """Per-frame soft masks (T,h,w) on the spectral grid, Sec. 3.1."""
    t_len, H, W = inp.frames.shape[:3]
    h, w = feature_grid((H, W), cfg)
    fwd_res = residual_flow(inp.flow.forward, seed=cfg.seed)
    bwd_res = residual_flow(inp.flow.backward, seed=cfg.seed)
    if inp.reliable_forward is not None:  # unreliable flow is missing, not zero
        fwd_res = np.where(inp.reliable_forward[..., None], fwd_res, np.nan)
        bwd_res = np.where(inp.reliable_backward[..., None], bwd_res, np.nan)
    nxt, prv = per_frame_motion(fwd_res, bwd_res)
    saliency = _to_grid(motion_saliency(nxt, prv), (h, w))[..., 0]
    saliency = np.nan_to_num(saliency)
    phi_n, rel_n = _motion_features(_to_grid(nxt, (h, w)), cfg.motion_scale)
    phi_p, rel_p = _motion_features(_to_grid(prv, (h, w)), cfg.motion_scale)
    psi = inp.features
    if psi is None or psi.shape[1:3] != (h, w):
        raise ValueError(f"features must be on the {h}x{w} spectral grid, got {None if psi is None else psi.shape}")
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    border = border.flatten()
    n = h * w
    soft = np.empty((t_len, h, w), np.float32)
    iters = []
    for s0 in range(0, t_len, cfg.pic_batch):
        sl = slice(s0, min(t_len, s0 + cfg.pic_batch))
        tt = lambda a, c: torch.from_numpy(np.ascontiguousarray(a[sl])).reshape(-1, n, c)  # noqa: E731
        a = affinity(
            tt(psi, psi.shape[-1]), tt(phi_n, 3), tt(phi_p, 3),
            tt(rel_n.astype(np.float32), 1)[..., 0], tt(rel_p.astype(np.float32), 1)[..., 0],
            cfg.alpha_psi, cfg.alpha_phi, cfg.affinity_threshold,
        )
        sal = tt(saliency, 1)[..., 0]
        start = sal - sal.mean(-1, keepdim=True)  # a warm start; convergence does not depend on it
        res = second_eigenvector(a, start=start, tol=cfg.pic_tol, max_iter=cfg.pic_max_iter, seed=cfg.seed)
        soft[sl] = bipartition_soft(res.vectors, sal, border, cfg.sharpness, a, cfg.split).reshape(-1, h, w).numpy()
        iters += res.iterations.tolist()
    return soft, {"pic_iterations_mean": float(np.mean(iters)), "pic_iterations_max": float(np.max(iters))}


def eq1_loss(
    z: torch.Tensor,
    init: torch.Tensor,
    flow_fwd: torch.Tensor,
    flow_bwd: torch.Tensor,
    weight_fwd: torch.Tensor,
    weight_bwd: torch.Tensor,
    lam: float,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Eq. (1) for logits z (T,1,h,w), targets ``init`` (T,1,h,w), flows (T-1,h,w,2) on the same grid.

    ``weight_fwd`` (T-1,1,h,w) weights the term on frame p+1 (it uses flow p+1->p = ``flow_bwd``),
    ``weight_bwd`` the term on frame p (flow p->p+1 = ``flow_fwd``); 0 drops unreliable flow and
    samples that leave the image.
    """
    x = torch.sigmoid(z)
    unary = F.binary_cross_entropy_with_logits(z, init, reduction="sum")

    def ce(target, prob):
        prob = prob.clamp(eps, 1 - eps)
        return -(target * prob.log() + (1 - target) * (1 - prob).log())

    to_next, inside_n = backward_warp(x[:-1], flow_bwd)  # w_{p->p+1}(x_p), on frame p+1
    to_prev, inside_p = backward_warp(x[1:], flow_fwd)  # w_{p+1->p}(x_{p+1}), on frame p
    pair = (weight_fwd * inside_n * ce(x[1:], to_next)).sum() + (weight_bwd * inside_p * ce(x[:-1], to_prev)).sum()
    return lam * unary + pair


def optimise(
    init: np.ndarray,
    flow_fwd: np.ndarray,
    flow_bwd: np.ndarray,
    weight_fwd: Optional[np.ndarray],
    weight_bwd: Optional[np.ndarray],
    lam: float,
    max_iter: int = 100,
) -> Tuple[np.ndarray, dict]:
    """Minimise Eq. (1) from the initialisation with L-BFGS; returns soft masks (T,h,w)."""
    dt = torch.float64
    init_t = torch.from_numpy(init).to(dt)[:, None].clamp(1e-4, 1 - 1e-4)
    ff = torch.from_numpy(flow_fwd).to(dt)
    fb = torch.from_numpy(flow_bwd).to(dt)
    ones = torch.ones(init_t.shape[0] - 1, 1, *init_t.shape[2:], dtype=dt)
    wf = ones if weight_fwd is None else torch.from_numpy(np.asarray(weight_fwd, np.float64))[:, None]
    wb = ones if weight_bwd is None else torch.from_numpy(np.asarray(weight_bwd, np.float64))[:, None]
    z = torch.logit(init_t).clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )
    evals = []

    def closure():
        opt.zero_grad()
        loss = eq1_loss(z, init_t, ff, fb, wf, wb, lam)
        loss.backward()
        evals.append(float(loss.detach()))
        return loss

    opt.step(closure)
    soft = torch.sigmoid(z.detach()).float()[:, 0].numpy()
    return soft, {"loss_start": evals[0], "loss_end": evals[-1], "loss_evals": float(len(evals))}


@register_method("globalopt", GlobalOptConfig)
def globalopt(inp: MethodInput, cfg: GlobalOptConfig) -> MethodOutput:
    """Spectral initialisation + Eq. (1) global optimisation; soft masks on the optimisation grid."""
    t_len, H, W = inp.frames.shape[:3]
    t0 = time.perf_counter()
    init, info = initial_masks(inp, cfg)
    info["seconds_init"] = time.perf_counter() - t0
    oh, ow = max(2, H // cfg.opt_stride), max(2, W // cfg.opt_stride)
    init_o = F.interpolate(torch.from_numpy(init)[:, None], size=(oh, ow), mode="bilinear", align_corners=False)
    init_o = init_o[:, 0].numpy()
    if not cfg.optimise:
        return MethodOutput(init_o, {"init": init_o}, info)
    wf = wb = None
    if inp.reliable_forward is not None:  # the weight of a term lives on the frame the flow starts from
        wb = _to_grid(inp.reliable_forward.astype(np.float32), (oh, ow))[..., 0]
        wf = _to_grid(inp.reliable_backward.astype(np.float32), (oh, ow))[..., 0]
    t0 = time.perf_counter()
    soft, oinfo = optimise(
        init_o, resize_flow(inp.flow.forward, oh, ow), resize_flow(inp.flow.backward, oh, ow), wf, wb,
        cfg.lam, cfg.lbfgs_max_iter,
    )
    info.update(oinfo)
    info["seconds_optimise"] = time.perf_counter() - t0
    return MethodOutput(soft, {"init": init_o}, info)


globalopt.feature_grid = feature_grid  # the grid the appearance features must be computed on
