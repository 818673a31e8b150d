"""IKE: iterative knowledge exchange between a space-time graph and a per-video network.

Cycle 1 (unsupervised): node features are the camera-compensated motion collected along each
pixel's chain; the leading eigenvector of P·M·P (:mod:`.graph`) is the first soft segmentation.
Then, for each further cycle, a small network learns that segmentation from the frames
(:mod:`vosbatch.ops.segnet`) and the graph runs again with the network's masks and its own previous
output added to the features, so appearance (learned by the net) and motion (the chains) correct each
other. ``prior`` masks (``--refine-from``) become node features from cycle 1 on (the paper's
"general refinement procedure"). The output is the mean of the last graph stage and the last network
stage: the two halves err differently (motion spills into moving water, appearance into same-coloured
background).

Departures from the paper (docs/methods.md gives each one's reason and effect): motion features are
the *residual* flow after removing the camera's motion (:mod:`vosbatch.ops.motion`), not raw
displacements; each pixel's distance from the background's epipolar geometry is a feature too; the
ridge regulariser scales with the node count; the eigenvector is scaled per frame.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ...ops.grid import area_to_grid
from ...ops.motion import frame_motion, independent_motion, motion_saliency, per_frame_motion
from ...ops.segnet import frame_inputs, train_and_predict
from ...postprocess.binarize import centre_at_cut, kmeans_threshold
from ...progress import span
from ..base import MethodInput, MethodOutput
from .config import IkeConfig
from .graph import ChainWarper, FeatureProjection, along_chain, feature_weights, grid_flow, leading_eigenvector


def _motion_maps(inp: MethodInput, cfg: IkeConfig) -> Tuple[np.ndarray, torch.Tensor]:
    """Per-frame motion at working resolution (T,H,W,C): next/previous motion (x,y), with ``epipolar`` the
    distance from the background's two-view geometry, and the saliency (always last); and each channel's
    weight as a node feature (C,), built with the channels so that the two agree."""
    fc = cfg.features
    nxt, prv = frame_motion(inp.flow.forward, inp.flow.backward, seed=cfg.seed, layers=fc.background_layers)
    sal = np.nan_to_num(motion_saliency(nxt, prv))  # 0 where neither direction is known
    nxt = np.where(np.isnan(nxt), -np.nan_to_num(prv), nxt)  # first/last frame: the other direction
    prv = np.where(np.isnan(prv), -np.nan_to_num(nxt), prv)
    parts, weights = [nxt, prv], [1.0] * 4
    if fc.epipolar:  # min over the two directions, as the saliency: an occlusion hurts only one
        dist_f, dist_b = (independent_motion(f, seed=cfg.seed)[..., None] for f in (inp.flow.forward, inp.flow.backward))
        parts.append(np.nan_to_num(np.fmin(*per_frame_motion(dist_f, dist_b))))
        weights.append(fc.epipolar_weight)
    return np.concatenate(parts + [sal[..., None]], -1).astype(np.float32), torch.tensor(weights + [1.0])


def _soft_from_eigenvector(x: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """Unit eigenvector (T,1,h,w) -> soft masks (T,h,w) in [0,1], on its device.

    An eigenvector's sign is arbitrary; the object is the side that moves against the camera, so
    the sign is chosen to make x correlate positively with the motion saliency (not "the smaller
    side", which fails whenever the object fills most of the frame). Negative values are
    background; positives are scaled per frame by a high quantile, so one outlier pixel does not set
    the scale: the eigenvector's magnitude in a frame follows its nodes' degree in M (a frame near
    either end of the video has half the chain edges) and how strongly the object moves there,
    neither of which says whether a pixel is object.
    """
    if float((x * (saliency - saliency.mean())).sum()) < 0:
        x = -x
    x = x.clamp_min(0)[:, 0]
    scale = torch.quantile(x.reshape(x.shape[0], -1), 0.995, dim=1).clamp_min(1e-12)[:, None, None]
    return (x / scale).clamp(0, 1).float()


def stage_probabilities(scores: torch.Tensor, cut: float, cfg: IkeConfig) -> torch.Tensor:
    """A stage's scores -> the soft masks the method outputs (probabilities): centred at the video's
    K-means cut and sharpened in logit space, so the binarisation reads them as the cut says.

    * Graph stages: the scaled eigenvector is a score, not a probability: the object often sits at
      0.3-0.6, which the binarisation's colour model takes for "unsure" and erases.
    * Net stages: the sigmoid's background sits at the labels' foreground rate the net started from
      (car-shadow: 0.05 over most of the frame, not 0), and the colour model turns such background
      into object wherever its colour resembles the object's.

    Only the output is mapped: the cycles keep the raw scores for their features.
    """
    return centre_at_cut(scores, cfg.sharpness, cut=cut)


def _above_cut(soft: torch.Tensor, cut: float) -> torch.Tensor:
    """A mask as a node feature: (m - cut)₊ rescaled to [0,1], cut = the video's K-means threshold.

    The background of a soft mask is rarely exactly 0; a small, nearly constant background level
    would put the flat vector back into the feature span, and the leading eigenvector would then
    spread over the background instead of staying on the object.
    """
    return ((soft - cut) / max(1e-6, 1.0 - cut)).clamp(0, 1)[:, None]





def graph_cycle(warper: ChainWarper, parts: List[Tuple[torch.Tensor, torch.Tensor]], saliency: torch.Tensor,
                cfg: IkeConfig, seed: int, start: Optional[torch.Tensor] = None):
    """One graph stage: features along chains, projection, leading eigenvector, soft masks.

    ``parts``: per-frame maps (T,C_i,h,w), each with its channels' weights (C_i,), stacked here so that the
    stack is freed as soon as the features are built (the feature tensor is the method's peak memory)."""
    gc, fc = cfg.graph, cfg.features
    maps = torch.cat([m for m, _ in parts], 1)
    weights = torch.cat([w for _, w in parts])
    feats = along_chain(maps, warper, fc.window)
    del maps
    # Features have unit RMS, so FᵀF has N (the node count, ~10⁶) on its diagonal: the official α = 100
    # regularises nothing at this scale. α = ridge·N is the same shrinkage whatever the video's size.
    alpha = gc.ridge * (feats.shape[0] * feats.shape[2] * feats.shape[3])
    proj = FeatureProjection(feats, alpha, feature_weights(weights, fc.window, fc.sigma))
    del feats
    res = leading_eigenvector(warper, proj, gc.chain_length, gc.chain_sigma, gc.power_max_iter, gc.power_tol,
                              seed=seed, start=start)
    return _soft_from_eigenvector(res.vector, saliency), res


def ike(inp: MethodInput, cfg: IkeConfig) -> MethodOutput:
    t_len, H, W = inp.frames.shape[:3]
    hw = (max(2, H // cfg.graph.stride), max(2, W // cfg.graph.stride))
    info: Dict[str, float] = {}
    stages: Dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    dev = inp.device
    warper = ChainWarper(*grid_flow(inp.flow.forward, inp.flow.backward, hw), device=dev)
    motion_maps, motion_weights = _motion_maps(inp, cfg)  # RANSAC fits: on the CPU, then to the device once
    motion = area_to_grid(motion_maps, hw).to(dev)
    del motion_maps
    saliency = motion[:, -1:]
    prior = [(area_to_grid(inp.prior, hw).to(dev), torch.ones(1))] if inp.prior is not None else []
    masks: List[Tuple[torch.Tensor, torch.Tensor]] = []  # the previous cycle's graph and net masks, weight 1 each
    net_inputs = frame_inputs(inp.frames, hw, motion)
    info["seconds_graph_setup"] = time.perf_counter() - t0
    soft = pred = None  # the previous cycle's graph output and net prediction
    steps = 2 * cfg.cycles - 1  # graph1, net1, ..., graphN: the share of the method each one reports
    for cycle in range(1, cfg.cycles + 1):
        t0 = time.perf_counter()
        # later cycles start from the mean of the net's and the last graph's masks: fewer iterations
        start = None if cycle == 1 else 0.5 * (soft + pred)[:, None]
        with span((2 * cycle - 2) / steps, (2 * cycle - 1.5) / steps):  # a graph stage: about half a net's time
            soft, res = graph_cycle(warper, [(motion, motion_weights)] + prior + masks, saliency, cfg, cfg.seed + cycle, start)
        cut = kmeans_threshold(soft, seed=cfg.seed)  # the graph's own object/background split
        graph_prob = stage_probabilities(soft, cut, cfg)
        stages[f"graph{cycle}"] = graph_prob.cpu().numpy()  # the stage's output: one host copy
        info[f"power_iterations_graph{cycle}"] = float(res.iterations)
        info[f"seconds_graph{cycle}"] = time.perf_counter() - t0
        if cycle == cfg.cycles:
            break
        t0 = time.perf_counter()
        # the net learns the stage as output (probabilities, cut at 0.5): soft Dice would teach a raw score's
        # weak object parts above the cut as background
        with span((2 * cycle - 1.5) / steps, (2 * cycle) / steps):
            pred, ninfo = train_and_predict(net_inputs, graph_prob[:, None], 0.5, cfg.net, seed=cfg.seed + cycle, device=dev)
        pred_cut = kmeans_threshold(pred, seed=cfg.seed)
        stages[f"net{cycle}"] = stage_probabilities(pred, pred_cut, cfg).cpu().numpy()
        info.update({f"net{cycle}_{k}": v for k, v in ninfo.items()})
        info[f"seconds_net{cycle}"] = time.perf_counter() - t0
        # the next graph sees this cycle's graph and net masks (raw scores above their cuts) along the chains
        masks = [(_above_cut(soft, cut), torch.ones(1)), (_above_cut(pred, pred_cut), torch.ones(1))]
    soft = stages[f"graph{cfg.cycles}"]
    if cfg.cycles > 1:
        soft = 0.5 * (soft + stages[f"net{cfg.cycles - 1}"])
    return MethodOutput(soft, stages, info)

