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

   Two extensions of the paper are exposed: ``warp_span`` T ties each frame to its neighbours up to
   ±T frames (supplementary B; T=1 is the paper's choice) through *chained* flow, and ``scales``
   solves Eq. (1) on coarser grids first (each half the size of the next) and starts the next
   scale from the upsampled logits, so agreement across many frames travels at coarse cost. Both
   are off by default: on DAVIS (RAFT-small flow, 4-8 hard val sequences) neither raised J.

   One deviation from the paper is on by default (``warp_reliability="photometric"``): the warp
   terms of Eq. (1) skip flow vectors that match badly (the worst 10% photometric error per frame,
   :mod:`vosbatch.flow.reliability`), while the affinity of Eq. (2) keeps all flow. A wrong vector
   in the affinity is one vote among many; in a warp it drags the mask (libby with RAFT-small: J
   0.466 with all vectors, 0.562 without the bad ones).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..flow.base import resize_flow
from ..flow.reliability import photometric_reliability
from ..ops.grid import area_to_grid
from ..ops.motion import frame_motion, motion_saliency
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
    reliability_in: str = "both"  # where flow-quality masks apply: "both", "affinity" (Eq. 2) or "optimisation" (Eq. 1)
    warp_reliability: str = "photometric"  # Eq. 1's warp weights: "input" (the run's flow-quality masks, if any) or
    # "photometric" (the run's masks when it has them, else computed here for the warp terms alone)
    warp_span: int = 1  # T: warp terms between frames up to ±T apart (supp. B); T>1 chains the flows
    scales: int = 1  # multi-scale: 2 solves on the half-size grid first, then on the optimisation grid
    lbfgs_max_iter: int = 100  # per scale
    optimise: bool = True
    seed: int = 0


def feature_grid(work_hw: Tuple[int, int], cfg: GlobalOptConfig) -> Tuple[int, int]:
    return max(2, work_hw[0] // cfg.grid_stride), max(2, work_hw[1] // cfg.grid_stride)


def _to_grid(x: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """(T,H,W[,C]) maps area-averaged on an (h,w) grid, channels last (NaN-aware, :mod:`..ops.grid`)."""
    return area_to_grid(x, hw).permute(0, 2, 3, 1).numpy()


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
    masks = (inp.reliable_forward, inp.reliable_backward) if cfg.reliability_in in ("both", "affinity") else (None, None)
    nxt, prv = frame_motion(inp.flow.forward, inp.flow.backward, *masks, seed=cfg.seed)
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


def _ce(target: torch.Tensor, prob: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    prob = prob.clamp(eps, 1 - eps)
    return -(target * prob.log() + (1 - target) * (1 - prob).log())


@dataclass
class WarpTerms:
    """The warp terms of Eq. (1) between frames p and p+d (``offset`` d), for p = 0 … T-1-d.

    ``flow_fwd`` (T-d,h,w,2) is flow p->p+d and ``flow_bwd`` flow p+d->p on the optimisation grid.
    ``weight_next`` (T-d,1,h,w) weights the term on frame p+d (it samples x_p with ``flow_bwd``),
    ``weight_prev`` the term on frame p (it samples x_{p+d} with ``flow_fwd``); both already hold 0
    where a sample leaves the image or the flow is unreliable.
    """

    offset: int
    flow_fwd: torch.Tensor
    flow_bwd: torch.Tensor
    weight_next: torch.Tensor
    weight_prev: torch.Tensor


def warp_terms_loss(x: torch.Tensor, terms: WarpTerms) -> torch.Tensor:
    """Σ_p CE(x_{p+d}, w_{p→p+d}(x_p)) + CE(x_p, w_{p+d→p}(x_{p+d})), weighted (Eq. 1's pair terms)."""
    d = terms.offset
    to_next, _ = backward_warp(x[:-d], terms.flow_bwd)  # w_{p->p+d}(x_p), on frame p+d
    to_prev, _ = backward_warp(x[d:], terms.flow_fwd)  # w_{p+d->p}(x_{p+d}), on frame p
    return (terms.weight_next * _ce(x[d:], to_next)).sum() + (terms.weight_prev * _ce(x[:-d], to_prev)).sum()


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
    terms = adjacent_terms(flow_fwd, flow_bwd, weight_fwd, weight_bwd)
    return eq1_loss_terms(z, init, [terms], lam)


def eq1_loss_terms(z: torch.Tensor, init: torch.Tensor, terms: List[WarpTerms], lam: float) -> torch.Tensor:
    """Eq. (1) with the warp terms of every offset in ``terms`` (±T frames, supp. B), summed."""
    unary = F.binary_cross_entropy_with_logits(z, init, reduction="sum")
    x = torch.sigmoid(z)
    return lam * unary + sum(warp_terms_loss(x, t) for t in terms)


def _inside(flow: torch.Tensor) -> torch.Tensor:
    """(N,1,h,w) 1 where following ``flow`` (N,h,w,2) lands inside the grid."""
    return backward_warp(torch.zeros(flow.shape[0], 1, *flow.shape[1:3], dtype=flow.dtype), flow)[1]


def adjacent_terms(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, weight_fwd: torch.Tensor,
                   weight_bwd: torch.Tensor) -> WarpTerms:
    """Offset-1 terms; the weights gain the in-image test of their sampling flow."""
    return WarpTerms(1, flow_fwd, flow_bwd, weight_fwd * _inside(flow_bwd), weight_bwd * _inside(flow_fwd))


def chain_flows(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, weight_fwd: torch.Tensor,
                weight_bwd: torch.Tensor, span: int) -> List[WarpTerms]:
    """Warp terms for offsets 1 … ``span`` from adjacent flows (T-1,h,w,2) by composing them.

    flow_{p→p+d}(q) = flow_{p→p+1}(q) + flow_{p+1→p+d}(q + flow_{p→p+1}(q)), and likewise backwards
    (flow_{p+d→p} = flow_{p+d→p+d-1} followed by flow_{p+d-1→p}). A chained vector is trusted where
    every step is: the weights multiply along the chain (warped the same way), and leaving the image
    at any step zeroes them.
    """
    one = adjacent_terms(flow_fwd, flow_bwd, weight_fwd, weight_bwd)
    terms = [one]
    # per-step weights of the flows themselves: reliability of the flow's start frame x in-image
    step_fwd_w, step_bwd_w = one.weight_prev, one.weight_next  # on frame p (flow p->p+1) / p+1 (flow p+1->p)
    fwd, bwd, wf_chain, wb_chain = flow_fwd, flow_bwd, step_fwd_w, step_bwd_w
    for d in range(2, span + 1):
        if flow_fwd.shape[0] - d + 1 < 1:
            break
        # forward: p -> p+1 (adjacent, frames 0..T-1-d), then p+1 -> p+d (previous chain starting at p+1)
        f1 = flow_fwd[: fwd.shape[0] - 1]
        rest, _ = backward_warp(fwd[1:].permute(0, 3, 1, 2), f1)
        rest_w, _ = backward_warp(wf_chain[1:], f1)
        new_fwd = f1 + rest.permute(0, 2, 3, 1)
        new_wf = step_fwd_w[: f1.shape[0]] * rest_w
        # backward: p+d -> p+d-1 (adjacent, index p+d-1), then p+d-1 -> p (previous chain at p)
        b1 = flow_bwd[d - 1:]
        rest, _ = backward_warp(bwd[:-1].permute(0, 3, 1, 2), b1)
        rest_w, _ = backward_warp(wb_chain[:-1], b1)
        new_bwd = b1 + rest.permute(0, 2, 3, 1)
        new_wb = step_bwd_w[d - 1:] * rest_w
        fwd, bwd, wf_chain, wb_chain = new_fwd, new_bwd, new_wf, new_wb
        terms.append(WarpTerms(d, fwd, bwd, weight_next=wb_chain * _inside(bwd), weight_prev=wf_chain * _inside(fwd)))
    return terms


def optimise(
    init: np.ndarray,
    flow_fwd: np.ndarray,
    flow_bwd: np.ndarray,
    weight_fwd: Optional[np.ndarray],
    weight_bwd: Optional[np.ndarray],
    lam: float,
    max_iter: int = 100,
    warp_span: int = 1,
    scales: int = 1,
) -> Tuple[np.ndarray, dict]:
    """Minimise Eq. (1) from the initialisation with L-BFGS; returns soft masks (T,h,w).

    Inputs live on one grid (h,w). With ``scales`` > 1 the problem is first solved on grids halved
    ``scales``-1 times (init area-averaged, flows resized *and rescaled*, weights averaged), each
    solution's logits upsampled to start the next finer solve.
    """
    dt = torch.float64
    t_len, h, w = init.shape
    ones = np.ones((t_len - 1, h, w), np.float64)
    wf_full = ones if weight_fwd is None else np.asarray(weight_fwd, np.float64)
    wb_full = ones if weight_bwd is None else np.asarray(weight_bwd, np.float64)
    grids = [(max(2, h >> k), max(2, w >> k)) for k in range(max(1, scales) - 1, -1, -1)]
    z = None
    info = {"loss_evals": 0.0}
    for gh, gw in grids:
        def on_grid(a):
            t = torch.from_numpy(np.ascontiguousarray(a, np.float64))[:, None]
            return F.adaptive_avg_pool2d(t, (gh, gw)) if (gh, gw) != (h, w) else t

        init_t = on_grid(init).clamp(1e-4, 1 - 1e-4)
        ff = torch.from_numpy(resize_flow(flow_fwd, gh, gw)).to(dt)
        fb = torch.from_numpy(resize_flow(flow_bwd, gh, gw)).to(dt)
        terms = chain_flows(ff, fb, on_grid(wf_full), on_grid(wb_full), warp_span)
        z0 = torch.logit(init_t) if z is None else F.interpolate(z, size=(gh, gw), mode="bilinear", align_corners=False)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [z], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
            tolerance_grad=1e-9, tolerance_change=1e-12,
        )
        evals = []

        def closure():
            opt.zero_grad()
            loss = eq1_loss_terms(z, init_t, terms, lam)
            loss.backward()
            evals.append(float(loss.detach()))
            return loss

        opt.step(closure)
        z = z.detach()
        info["loss_evals"] += len(evals)
        info.setdefault("loss_start", evals[0])
        info["loss_end"] = evals[-1]
    info["loss_start_final_scale"] = evals[0]
    soft = torch.sigmoid(z).float()[:, 0].numpy()
    return soft, info


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
    t0 = time.perf_counter()
    wf = wb = None
    rel_f, rel_b = inp.reliable_forward, inp.reliable_backward
    if cfg.warp_reliability == "photometric" and rel_f is None:
        # a warp through badly matched flow drags masks to the wrong place; a vector that is merely
        # uncertain for the affinity still says something, so the two uses can be masked separately
        rel = photometric_reliability(inp.frames, inp.flow)
        rel_f, rel_b = rel.forward, rel.backward
    elif cfg.warp_reliability not in ("input", "photometric"):
        raise ValueError(f"warp_reliability must be 'input' or 'photometric', not {cfg.warp_reliability!r}")
    if rel_f is not None and (cfg.reliability_in in ("both", "optimisation") or cfg.warp_reliability == "photometric"):
        # the weight of a term lives on the frame the flow starts from
        wb = _to_grid(rel_f.astype(np.float32), (oh, ow))[..., 0]
        wf = _to_grid(rel_b.astype(np.float32), (oh, ow))[..., 0]
    soft, oinfo = optimise(
        init_o, resize_flow(inp.flow.forward, oh, ow), resize_flow(inp.flow.backward, oh, ow), wf, wb,
        cfg.lam, cfg.lbfgs_max_iter, warp_span=cfg.warp_span, scales=cfg.scales,
    )
    info.update(oinfo)
    info["seconds_optimise"] = time.perf_counter() - t0
    return MethodOutput(soft, {"init": init_o}, info)


globalopt.feature_grid = feature_grid  # the grid the appearance features must be computed on
