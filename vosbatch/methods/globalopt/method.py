"""Global optimisation of soft masks over a whole video (Ponimatkin et al., WACV 2023).

1. Initialisation (Sec. 3.1): per frame, the second eigenvector of an appearance + motion affinity
   (Eq. 2) on a coarse grid (:mod:`vosbatch.ops.spectral`). Motion is the *residual* flow after removing
   the camera's homography (:mod:`vosbatch.ops.motion`), because camera motion dominates raw flow.
2. Optimisation (Sec. 3.2, Eq. 1): one objective over all frames,

       L = Σ_p λ·CE(x̂_p, x_p) + μ·[CE(x_{p+1}, w_{p→p+1}(x_p)) + CE(x_p, w_{p+1→p}(x_{p+1}))],   (1)

   x_p = σ(z_p) the soft mask of frame p, x̂_p its initialisation, w_{a→b} backward warping of a
   mask from frame a onto frame b (sample at q + flow_{b→a}(q)), CE(a, b) = -Σ a log b +
   (1-a) log(1-b), μ the warp weight (1 here, 0.01 in the authors' code). Minimised with L-BFGS over
   the logits z in float64 with a summed loss, so the stopping tests see real changes (a float32
   mean-normalised loss stops after ~2 iterations).

   The warp terms skip flow vectors that match badly (the worst 10 % photometric error per frame,
   :mod:`vosbatch.flow.reliability`), while the affinity keeps all flow: a wrong vector in the affinity
   is one vote among many, in a warp it drags the mask. docs/methods.md lists this and every other
   departure from the paper.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...flow.base import resize_flow
from ...flow.reliability import photometric_reliability
from ...ops.grid import area_to_grid, bilinear_resize
from ...ops.motion import frame_motion, motion_saliency, per_frame_motion
from ...ops.spectral import affinity, bipartition_soft, second_eigenvector
from ...ops.warp import backward_warp
from ...progress import report, span
from ..base import MethodInput, MethodOutput
from .config import GlobalOptConfig, OptimisationConfig, feature_grid


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


def _node_motion(inp: MethodInput, cfg: GlobalOptConfig, hw: Tuple[int, int]):
    """φ⁺, φ⁻ per node (T,h,w,C), where they exist (T,h,w), and the motion saliency (T,h,w)."""
    sc = cfg.spectral
    forward, backward = inp.flow.forward, inp.flow.backward
    if sc.flow_clip:
        forward, backward = (np.clip(f, -sc.flow_clip, sc.flow_clip) for f in (forward, backward))
    nxt, prv = frame_motion(forward, backward, seed=cfg.seed)
    saliency = np.nan_to_num(_to_grid(motion_saliency(nxt, prv), hw)[..., 0])
    if sc.motion == "residual":
        phi_n, rel_n = _motion_features(_to_grid(nxt, hw), sc.motion_scale)
        phi_p, rel_p = _motion_features(_to_grid(prv, hw), sc.motion_scale)
        return phi_n, rel_n, phi_p, rel_p, saliency
    # the flow as it is (the authors' φ): a frame without a next (previous) flow uses the other direction
    raw_n, raw_p = (_to_grid(m, hw) for m in per_frame_motion(forward, backward))
    raw_n, raw_p = np.where(np.isnan(raw_n), -np.nan_to_num(raw_p), raw_n), np.where(np.isnan(raw_p), -np.nan_to_num(raw_n), raw_p)
    ones = np.ones(raw_n.shape[:-1], bool)
    return raw_n, ones, raw_p, ones, saliency


def initial_masks(inp: MethodInput, cfg: GlobalOptConfig) -> Tuple[np.ndarray, dict, np.ndarray]:
    """Per-frame soft masks (T,h,w) on the spectral grid, Sec. 3.1, diagnostics, and each frame's relaxed
    normalised cut 1 − λ₂ (T,): how cleanly its affinity splits in two (:mod:`vosbatch.ops.spectral`)."""
    sc = cfg.spectral
    t_len = inp.frames.shape[0]
    h, w = feature_grid(inp.frames.shape[1:3], cfg)
    phi_n, rel_n, phi_p, rel_p, saliency = _node_motion(inp, cfg, (h, w))
    psi = inp.features
    if psi is None or tuple(psi.shape[1:3]) != (h, w):
        raise ValueError(f"features must be on the {h}x{w} spectral grid, got {None if psi is None else psi.shape}")
    dev = inp.device
    n = h * w
    # every node's inputs go to the device once; the frames are solved there in batches
    on_dev = lambda a: (a if torch.is_tensor(a) else torch.from_numpy(np.ascontiguousarray(a))).to(dev)  # noqa: E731
    psi, phi_n, phi_p = on_dev(psi).reshape(t_len, n, -1), on_dev(phi_n).reshape(t_len, n, -1), on_dev(phi_p).reshape(t_len, n, -1)
    rel_n, rel_p = (on_dev(r.astype(np.float32)).reshape(t_len, n) for r in (rel_n, rel_p))
    saliency = on_dev(saliency).reshape(t_len, n)
    border = torch.zeros(h, w, dtype=torch.bool, device=dev)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    border = border.flatten()
    soft = torch.empty((t_len, n), dtype=torch.float32, device=dev)
    iters, cuts = [], []
    for s0 in range(0, t_len, sc.pic_batch):
        sl = slice(s0, min(t_len, s0 + sc.pic_batch))
        a = affinity(psi[sl], phi_n[sl], phi_p[sl], rel_n[sl], rel_p[sl],
                     sc.alpha_psi, sc.alpha_phi, sc.affinity_threshold, sc.affinity_floor)
        sal = saliency[sl]
        start = sal - sal.mean(-1, keepdim=True)  # a warm start; convergence does not depend on it
        res = second_eigenvector(a, start=start, tol=sc.pic_tol, max_iter=sc.pic_max_iter, seed=cfg.seed)
        soft[sl] = bipartition_soft(res.vectors, sal, border, sc.sharpness)
        iters.append(res.iterations)
        cuts.append(1.0 - res.eigenvalues)
        report("method", sl.stop / t_len)
    iters = torch.cat(iters).cpu().numpy()
    info = {"pic_iterations_mean": float(np.mean(iters)), "pic_iterations_max": float(np.max(iters))}
    return soft.reshape(t_len, h, w).cpu().numpy(), info, torch.cat(cuts).double().cpu().numpy()


def _ce(target: torch.Tensor, prob: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    prob = prob.clamp(eps, 1 - eps)
    return -(target * prob.log() + (1 - target) * (1 - prob).log())


def _inside(flow: torch.Tensor) -> torch.Tensor:
    """(N,1,h,w) 1 where following ``flow`` (N,h,w,2) lands inside the grid."""
    return backward_warp(torch.zeros(flow.shape[0], 1, *flow.shape[1:3], dtype=flow.dtype, device=flow.device), flow)[1]


def eq1_loss(z: torch.Tensor, init: torch.Tensor, flow_fwd: torch.Tensor, flow_bwd: torch.Tensor,
             weight_next: torch.Tensor, weight_prev: torch.Tensor, lam: float, warp_weight: float = 1.0) -> torch.Tensor:
    """Eq. (1) for logits z (T,1,h,w), targets ``init`` (T,1,h,w), flows (T-1,h,w,2) on the same grid.

    ``weight_next`` (T-1,1,h,w) weights the term on frame p+1 (it samples x_p with flow p+1->p =
    ``flow_bwd``), ``weight_prev`` the term on frame p (it samples x_{p+1} with ``flow_fwd``); 0 drops
    unreliable flow and samples that leave the image (:func:`warp_weights`).
    """
    unary = F.binary_cross_entropy_with_logits(z, init, reduction="sum")
    x = torch.sigmoid(z)
    to_next, _ = backward_warp(x[:-1], flow_bwd)  # w_{p->p+1}(x_p), on frame p+1
    to_prev, _ = backward_warp(x[1:], flow_fwd)  # w_{p+1->p}(x_{p+1}), on frame p
    warps = (weight_next * _ce(x[1:], to_next)).sum() + (weight_prev * _ce(x[:-1], to_prev)).sum()
    return lam * unary + warp_weight * warps


def warp_weights(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, reliable_next: torch.Tensor,
                 reliable_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1's pair weights: the flow's reliability times the in-image test of the flow that samples."""
    return reliable_next * _inside(flow_bwd), reliable_prev * _inside(flow_fwd)


def optimise(init: np.ndarray, flow_fwd: np.ndarray, flow_bwd: np.ndarray, reliable_next: Optional[np.ndarray],
             reliable_prev: Optional[np.ndarray], lam: float, max_iter: int = 100, warp_weight: float = 1.0,
             start: Optional[np.ndarray] = None, device: torch.device = torch.device("cpu")) -> Tuple[np.ndarray, dict]:
    """Minimise Eq. (1) from the initialisation with L-BFGS on ``device``; returns soft masks (T,h,w).

    Inputs live on one grid (h,w): flows in its pixels, reliabilities (T-1,h,w) in [0,1] weighting the
    term on frame p+1 (``reliable_next``) and on frame p (``reliable_prev``). ``start``: logits to start
    from (default: the initialisation's), e.g. a coarser grid's solution upsampled. In float64: with a
    float32 mean-normalised loss L-BFGS's stopping tests see no change after ~2 iterations.
    """
    dt = torch.float64
    t_len, h, w = init.shape

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, np.float64)).to(device)

    def weight(a):
        return torch.ones(t_len - 1, 1, h, w, dtype=dt, device=device) if a is None else tensor(a)[:, None]

    init_t = tensor(init)[:, None].clamp(1e-4, 1 - 1e-4)
    ff = torch.from_numpy(flow_fwd).to(device=device, dtype=dt)
    fb = torch.from_numpy(flow_bwd).to(device=device, dtype=dt)
    w_next, w_prev = warp_weights(ff, fb, weight(reliable_next), weight(reliable_prev))
    z = (torch.logit(init_t) if start is None else tensor(start)[:, None]).clone()
    z.requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    evals = []

    def closure():
        opt.zero_grad()
        loss = eq1_loss(z, init_t, ff, fb, w_next, w_prev, lam, warp_weight)
        loss.backward()
        evals.append(float(loss.detach()))
        report("method", len(evals) / (1.25 * max_iter))  # L-BFGS evaluates at most 1.25 x max_iter times
        return loss

    opt.step(closure)
    z = z.detach()[:, 0].cpu()  # one transfer back
    soft = torch.sigmoid(z).float().numpy()
    return soft, {"loss_evals": float(len(evals)), "loss_start": evals[0], "loss_end": evals[-1], "logits": z.numpy()}


def _optimise_on(init: np.ndarray, inp: MethodInput, reliability, hw: Tuple[int, int], cfg: OptimisationConfig,
                 start: Optional[np.ndarray] = None):
    """Eq. 1 on an (h,w) grid: flows resized and rescaled to it, reliabilities area-averaged onto it."""
    rel_next = _to_grid(reliability.backward.astype(np.float32), hw)[..., 0]  # the term's weight lives on the
    rel_prev = _to_grid(reliability.forward.astype(np.float32), hw)[..., 0]  # frame its flow starts from
    return optimise(init, resize_flow(inp.flow.forward, *hw), resize_flow(inp.flow.backward, *hw), rel_next, rel_prev,
                    cfg.lam, cfg.lbfgs_max_iter, cfg.warp_weight, start, inp.device)


def globalopt(inp: MethodInput, cfg: GlobalOptConfig) -> MethodOutput:
    """Spectral initialisation + Eq. (1) global optimisation; soft masks on the optimisation grid."""
    H, W = inp.frames.shape[1:3]
    oc = cfg.optimisation
    t0 = time.perf_counter()
    with span(0.0, 0.4):
        init, info, cut = initial_masks(inp, cfg)
    info["seconds_init"] = time.perf_counter() - t0
    signals = {"spectral_cut": cut}
    hw = (max(2, H // oc.stride), max(2, W // oc.stride))
    init_o = bilinear_resize(init, hw).numpy()
    if not oc.enabled:
        return MethodOutput(init_o, {"init": init_o}, info, signals)
    t0 = time.perf_counter()
    # a warp through badly matched flow drags masks to the wrong place (the affinity keeps every vector)
    reliability = photometric_reliability(inp.frames, inp.flow)
    start = None
    if oc.coarse_to_fine and init.shape[1:] != hw:
        with span(0.4, 0.5):
            _, coarse = _optimise_on(init, inp, reliability, init.shape[1:], oc)
        start = bilinear_resize(coarse["logits"], hw).numpy()
    with span(0.5, 1.0):
        soft, oinfo = _optimise_on(init_o, inp, reliability, hw, oc, start)
    oinfo.pop("logits")
    info.update(oinfo)
    info["seconds_optimise"] = time.perf_counter() - t0
    return MethodOutput(soft, {"init": init_o}, info, signals)

