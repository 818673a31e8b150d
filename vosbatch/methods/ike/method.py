"""IKE: iterative knowledge exchange between a space-time graph and a per-video network.

Cycle 1 (unsupervised): node features are the camera-compensated motion collected along each
pixel's chain; the leading eigenvector of P·M·P (:mod:`.graph`) is the first soft segmentation.
Then, for each further cycle, a small network learns that segmentation from the frames
(:mod:`.net`) and the graph runs again with the network's masks and its own previous output
added to the features, so appearance (learned by the net) and motion (the chains) correct each
other. ``prior`` masks (``--refine-from``) become node features from cycle 1 on (the paper's
"general refinement procedure").

Departures from the paper, on purpose: motion features are the *residual* flow after removing the
camera's homography (:mod:`vosbatch.ops.motion`), not raw displacements, because camera motion
dominates raw flow and would otherwise be what the eigenvector segments; and (``epipolar``) each
pixel's distance from the background's epipolar geometry, because the homography leaves the parallax of
near static surfaces, which the eigenvector otherwise took for the object (DAVIS goat's rocks).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ...ops.motion import EPIPOLAR_FALLBACKS, frame_motion, independent_motion, motion_saliency, per_frame_motion
from ...postprocess.binarize import centre_at_cut, kmeans_threshold
from ..base import MethodInput, MethodOutput, register_method
from ...ops.segnet import NetConfig, frame_inputs, train_and_predict
from ...ops.grid import area_to_grid
from .graph import ChainWarper, FeatureProjection, along_chain, feature_weights, grid_flow, leading_eigenvector


@dataclass
class IkeConfig:
    graph_stride: int = 2  # working pixels per graph node (1 = one node per working pixel, as the paper)
    chain_length: int = 15  # p: chain steps followed in each direction (official 15)
    # σ of the Gaussian temporal weight of an edge (the paper's σ ≈ 4). Shorter chains (σ = 1 with p = 4: a 5th step
    # would weigh 4·10⁻⁶) are 40 % faster, and DAVIS val through the pipeline, J / F, gives with RAFT-small at 480 px
    # graph1 0.654 / 0.599 -> 0.661 / 0.608, output 0.687 / 0.620 -> 0.687 / 0.624, but with DIS at 480 px graph1
    # 0.648 / 0.594 -> 0.639 / 0.590 and output 0.684 / 0.638 -> 0.651 / 0.616 (goat 0.69 -> 0.18): not the default
    chain_sigma: float = 4.0
    # q: features are collected over 2q+1 frames along the chain, weighted by a Gaussian of σ = feature_sigma in
    # their offset k (0: all offsets weigh 1): a far offset describes the chain's pixel after more warps, as a far
    # edge joins weaker in M. DAVIS val, 20 videos, dis-fine, output J through the pipeline at seed 0 / seed 1:
    # q = 3 unweighted 0.7156 / 0.6825, q = 7 σ = 4 0.7214 / 0.6923 (better in 7 and 8 of 20, carried by
    # motocross-jump +0.10, drift-chicane +0.06; libby -0.02); q = 7 unweighted 0.7060 (libby -0.32), q = 5 0.7187
    feature_window: int = 7
    feature_sigma: float = 4.0
    ridge: float = 1.0  # α of the ridge regression in P, per node when ridge_per_node (see graph_cycle)
    ridge_per_node: bool = True  # α = ridge × nodes; False: α = ridge as is (official 100)
    power_max_iter: int = 20  # cap of the power iteration (official 20)
    power_tol: float = 1e-3  # stop when the unit eigenvector changes less than this
    symmetric: bool = True  # add the sending (adjoint) chains so M is exactly symmetric
    normalise: str = "frame"  # eigenvector -> [0,1]: "frame" (per-frame scale) or "video" (one scale)
    motion: str = "residual"  # motion features: "residual" (camera-compensated) or "raw" flow
    # static depth layers the residual motion removes (ops.motion.residual_flow): with 1 the homography fits the near
    # rocks or the far hillside of DAVIS goat depending on the RANSAC sample, and the other layer's parallax won or
    # lost the eigenvector: goat 0.788 / 0.225 / 0.388 / 0.600 / 0.598 / 0.788 at seeds 0-5; with 2 (a second layer
    # where GRIC finds depth) 0.776 / 0.782 / 0.789 / 0.769 / 0.776 / 0.785. DAVIS val, 20 videos, dis-fine, output J at seeds 0 / 1 / 2: 0.7214 /
    # 0.6923 / 0.7017 -> 0.7215 / 0.7209 / 0.7213 (8 videos have a two-layer pair; the rest are unchanged; README)
    background_layers: int = 2
    encoding: str = "linear"  # "linear": motion (x,y) and saliency; "levels": soft "moves more than τ× noise" indicators
    levels: tuple = (2.0, 4.0, 8.0)  # τ of the "levels" encoding, in units of the frame's residual noise
    # add each pixel's distance from the background's two-view geometry (ops.motion.independent_motion) to the
    # motion features: a near static surface moves against the homography (parallax) but not against the
    # epipolar geometry. DAVIS val, 20 videos, through the pipeline, output J / F: DIS at 480 px 0.649 / 0.606 ->
    # 0.685 / 0.638 (goat 0.12 -> 0.70), RAFT-small at 480 px 0.686 / 0.617 -> 0.688 / 0.620 (README, IKE section)
    epipolar: bool = True
    # the epipolar feature's weight after unit-RMS scaling: its share of the feature span against the ridge
    # (FeatureProjection). The channel was first collected twice by mistake, which is weight √2. DAVIS val, RAFT-small
    # at 480 px, graph1 J through the pipeline: weight 1 0.653, √2 0.654, 2 0.647 (goat 0.12 / 0.18 / 0.27, libby
    # 0.74 / 0.73 / 0.51: where the object moves along its epipolar lines the channel says little about it)
    epipolar_weight: float = 1.4142135623730951
    # the epipolar channel where GRIC keeps the homography (no depth in the background): "none" (0: the channel
    # says only what F adds) or "homography" (its residual: a second near-flat noise channel beside the saliency
    # where nothing moves on its own, which spoiled refinement from another method's masks)
    epipolar_fallback: str = "none"
    # graph cycles (a network is trained between consecutive ones). Each cycle shrinks the mask a little more: a 4th
    # (DAVIS val, dis-fine, output J through the pipeline, stopped after 9 videos) read 0.727 against 0.733 on them,
    # worse in 7 (dance-twirl -0.024, camel -0.021: lost parts), better in 2 (blackswan +0.024, goat +0.010: extra area)
    cycles: int = 3
    net_width: int = 8  # channels of the network's first stage (x2, x4 below)
    # The net trains on whole frames (net_crop 0), 300 AdamW steps of 2 frames: with 80-px crops (150 steps of 4) it
    # scored below its own labels. DAVIS val, 20 videos, DIS at 480 px, J / F: raw net1 0.572 -> 0.596 (graph1, its
    # labels, 0.580), output through the pipeline 0.685 / 0.639 -> 0.693 / 0.648, at 1.7x the method time (README)
    net_steps: int = 300  # AdamW steps per network cycle
    net_batch: int = 2
    net_lr: float = 3e-3
    net_crop: int = 0  # training crop side in graph pixels (0: whole frames)
    net_norm: str = "batch"  # the net's normalisation layers, see net.make_norm
    # feed the net the motion maps as well as RGB (the paper: RGB only). DAVIS val, 20 videos, dis-fine, output J / F
    # through the pipeline: with them 0.7156 / 0.6824, RGB only 0.7137 / 0.6696 (worse in 12, better in 5; README)
    net_motion_input: bool = True
    # the net's soft labels (its Dice target): the graph stage as output, a "probability" (stage_probabilities), or
    # its raw "score" (the scaled eigenvector). Soft Dice pushes p down wherever y < Dice/2, so a score's weak object
    # parts above the cut (a cow's head at 0.3) were taught as background against the CE term's hard labels, and
    # each net shrank its labels (DAVIS val: net1's mask 9 % smaller than graph1's). DAVIS val, 20 videos, dis-fine,
    # output J / F through the pipeline: score 0.712 / 0.677, probability 0.714 / 0.681 (better in 12, worse in 6)
    net_labels: str = "probability"
    # the masks later graph cycles collect as node features (the last graph and net stage, above their cut): the raw
    # "score" or the stage's "probability". Probabilities keep weak parts too, but also an early stage's errors: DAVIS
    # val (as net_labels above, both probability) output J / F 0.705 / 0.670, goat 0.77 -> 0.59 (its rocks)
    mask_features: str = "score"
    later_motion: bool = True  # cycles >= 2 keep the motion features (paper) besides the masks
    # cycles >= 2 start the power iteration from the mean of the net's and the last graph's masks, which only saves
    # iterations: from a seeded random vector DAVIS val reads the same (output J / F 0.7148 / 0.6803 against
    # 0.7145 / 0.6806, 13.4 instead of 9.0 iterations in graph2 and graph3; README, IKE section)
    warm_start: bool = True
    # graph and net stages are output as σ(s·(logit x − logit τ)), see stage_probabilities. s = 3 against 1 on 6
    # DAVIS val sequences, cycle 1 through the pipeline's binarisation: J 0.730 against 0.523 (0.546 as is)
    graph_sharpness: float = 3.0
    # output: the "mean" of the last graph and the last net stage (default), the last "graph", or the last
    # "net". DAVIS val (RAFT-small, one thread per process, through the pipeline's binarisation: colour model
    # + smoother): mean J 0.638 / F 0.586, graph3 0.634 / 0.580, net2 0.614 / 0.547. The two halves of the
    # exchange err differently (motion spills into moving water and splashes, appearance into same-coloured
    # background); their mean is better in 12 of the 20 videos. (Before net stages were output as
    # probabilities, net2 read 0.617 and the mean 0.630 / 0.568, below graph3.)
    final: str = "mean"
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse an unknown choice when the job is configured, not when its first video reaches it."""
        for name, allowed in (("final", ("graph", "net", "mean")), ("epipolar_fallback", EPIPOLAR_FALLBACKS),
                              ("normalise", ("frame", "video")), ("motion", ("residual", "raw")),
                              ("encoding", ("linear", "levels")),
                              ("net_labels", ("score", "probability")), ("mask_features", ("score", "probability"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"IKE {name}={getattr(self, name)!r}: choose {', '.join(allowed)}")
        if self.background_layers not in (1, 2):
            raise ValueError(f"IKE background_layers={self.background_layers!r}: choose 1 or 2")


def _motion_maps(inp: MethodInput, cfg: IkeConfig) -> Tuple[np.ndarray, torch.Tensor]:
    """Per-frame motion at working resolution (T,H,W,C): next/previous motion (x,y), with ``epipolar`` the
    distance from the background's two-view geometry (linear encoding), and the saliency (always last);
    and each channel's weight as a node feature (C,), built with the channels so that the two agree."""
    nxt, prv = frame_motion(inp.flow.forward, inp.flow.backward, inp.reliable_forward, inp.reliable_backward,
                            residual=cfg.motion == "residual", seed=cfg.seed, layers=cfg.background_layers)
    sal = np.nan_to_num(motion_saliency(nxt, prv))  # 0 where neither direction is known
    nxt = np.where(np.isnan(nxt), -np.nan_to_num(prv), nxt)  # first/last frame, unreliable: the other direction
    prv = np.where(np.isnan(prv), -np.nan_to_num(nxt), prv)
    if cfg.encoding == "linear":
        parts, weights = [nxt, prv], [1.0] * 4
        if cfg.epipolar:  # min over the two directions, as the saliency: an occlusion hurts only one
            dist_f, dist_b = (independent_motion(f, seed=cfg.seed, fallback=cfg.epipolar_fallback)[..., None]
                              for f in (inp.flow.forward, inp.flow.backward))
            if inp.reliable_forward is not None:  # unreliable flow is unknown motion, not independent motion
                dist_f = np.where(inp.reliable_forward[..., None], dist_f, np.nan)
                dist_b = np.where(inp.reliable_backward[..., None], dist_b, np.nan)
            parts.append(np.nan_to_num(np.fmin(*per_frame_motion(dist_f, dist_b))))
            weights.append(cfg.epipolar_weight)
        return np.concatenate(parts + [sal[..., None]], -1).astype(np.float32), torch.tensor(weights + [1.0])
    # A linear function of raw motion cannot be 1 on an object and 0 elsewhere unless the object
    # moves in one direction; soft indicators of "moves clearly more than the background's own
    # flow error" (times the direction) can, whatever its direction, and stay 0 on the background.
    noise = np.nanmedian(sal.reshape(sal.shape[0], -1), axis=1)[:, None, None] + 0.05
    rel = sal / noise
    mag = np.linalg.norm(nxt, axis=-1) + 1e-6
    cos, sin = nxt[..., 0] / mag, nxt[..., 1] / mag
    out = []
    for tau in cfg.levels:
        ind = 1.0 / (1.0 + np.exp(-2.0 * (rel - tau)))
        out += [ind, ind * cos, ind * sin]
    out.append(sal)
    return np.stack(out, -1).astype(np.float32), torch.ones(len(out))


def _soft_from_eigenvector(x: torch.Tensor, saliency: torch.Tensor, normalise: str) -> np.ndarray:
    """Unit eigenvector (T,1,h,w) -> soft masks in [0,1].

    An eigenvector's sign is arbitrary; the object is the side that moves against the camera, so
    the sign is chosen to make x correlate positively with the motion saliency (not "the smaller
    side", which fails whenever the object fills most of the frame). Negative values are
    background; positives are scaled by a high quantile so one outlier pixel does not set the scale.

    The scale is per frame by default: the eigenvector's magnitude in a frame follows its nodes'
    degree in M (a frame near either end of the video has half the chain edges; chains that leave the
    image end early) and how strongly the object moves there, neither of which says whether a pixel
    is object. One video-wide scale left such frames below the threshold (DAVIS val, 8 sequences:
    J 0.425 -> 0.517 with the per-frame scale).
    """
    if float((x * (saliency - saliency.mean())).sum()) < 0:
        x = -x
    x = x.clamp_min(0)[:, 0]
    if normalise == "frame":
        scale = torch.quantile(x.reshape(x.shape[0], -1), 0.995, dim=1).clamp_min(1e-12)[:, None, None]
    else:
        flat = x.reshape(-1)
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        scale = torch.quantile(flat, 0.995).clamp_min(1e-12)
    return (x / scale).clamp(0, 1).numpy().astype(np.float32)


def stage_probabilities(scores: np.ndarray, cut: float, cfg: IkeConfig) -> np.ndarray:
    """A stage's scores -> the soft masks the method outputs (probabilities): centred at the video's
    K-means cut and sharpened in logit space, so the binarisation reads them as the cut says.

    * Graph stages: the scaled eigenvector is a score, not a probability: the object often sits at
      0.3-0.6, which the binarisation's colour model takes for "unsure" and erases (cycle 1 on DAVIS
      val car-roundabout: J 0.87 at the raw K-means cut, 0.64 through the colour model and the
      smoother; 0.86 mapped).
    * Net stages: the sigmoid's background sits at the labels' foreground rate the net started from
      (car-shadow: 0.05 over most of the frame, not 0), and the colour model turns such background
      into object wherever its colour resembles the object's (car-shadow net1: J 0.54 -> 0.85).

    Only the output is mapped: the cycles keep the raw scores for their features and the net's labels.
    """
    return centre_at_cut(scores, cfg.graph_sharpness, cut=cut)


def _above_cut(soft: np.ndarray, cut: float) -> torch.Tensor:
    """A mask as a node feature: (m - cut)₊ rescaled to [0,1], cut = the video's K-means threshold.

    The background of a soft mask is rarely exactly 0; a small, nearly constant background level
    would put the flat vector back into the feature span, and the leading eigenvector would then
    spread over the background instead of staying on the object.
    """
    return torch.from_numpy(np.clip((soft - cut) / max(1e-6, 1.0 - cut), 0, 1).astype(np.float32))[:, None]


def graph_cycle(warper: ChainWarper, parts: List[Tuple[torch.Tensor, torch.Tensor]], saliency: torch.Tensor,
                cfg: IkeConfig, seed: int, start: Optional[torch.Tensor] = None):
    """One graph stage: features along chains, projection, leading eigenvector, soft masks.

    ``parts``: per-frame maps (T,C_i,h,w), each with its channels' weights (C_i,), stacked here so that the
    stack is freed as soon as the features are built (the feature tensor is the method's peak memory)."""
    maps = torch.cat([m for m, _ in parts], 1)
    weights = torch.cat([w for _, w in parts])
    feats = along_chain(maps, warper, cfg.feature_window)
    del maps
    # Features have unit RMS, so FᵀF has N (the node count, ~10⁶) on its diagonal: the official α = 100
    # regularises nothing at this scale. α = ridge·N is the same shrinkage whatever the video's size.
    alpha = cfg.ridge * (feats.shape[0] * feats.shape[2] * feats.shape[3] if cfg.ridge_per_node else 1)
    proj = FeatureProjection(feats, alpha, feature_weights(weights, cfg.feature_window, cfg.feature_sigma))
    del feats
    res = leading_eigenvector(warper, proj, cfg.chain_length, cfg.chain_sigma, cfg.power_max_iter, cfg.power_tol,
                              seed=seed, start=start, symmetric=cfg.symmetric)
    return _soft_from_eigenvector(res.vector, saliency, cfg.normalise), res


def stage_names(cfg: IkeConfig) -> List[str]:
    """The stages :func:`ike` outputs besides its result, in order (graph1, net1, ..., graphN): known
    before it runs, so that a job can reject a request for a stage that will not exist up front."""
    return [name for cycle in range(1, cfg.cycles + 1) for name in (f"graph{cycle}", f"net{cycle}")][:-1]


@register_method("ike", IkeConfig)
def ike(inp: MethodInput, cfg: IkeConfig) -> MethodOutput:
    t_len, H, W = inp.frames.shape[:3]
    hw = (max(2, H // cfg.graph_stride), max(2, W // cfg.graph_stride))
    info: Dict[str, float] = {}
    stages: Dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    warper = ChainWarper(*grid_flow(inp.flow.forward, inp.flow.backward, hw))
    motion_maps, motion_weights = _motion_maps(inp, cfg)
    motion = area_to_grid(motion_maps, hw)
    del motion_maps
    saliency = motion[:, -1:]
    extra: List[Tuple[torch.Tensor, torch.Tensor]] = []  # masks as node features, weight 1
    if inp.prior is not None:
        extra.append((area_to_grid(inp.prior, hw), torch.ones(1)))
    net_cfg = NetConfig(width=cfg.net_width, steps=cfg.net_steps, batch=cfg.net_batch, lr=cfg.net_lr, crop=cfg.net_crop,
                        norm=cfg.net_norm)
    net_inputs = frame_inputs(inp.frames, hw, motion if cfg.net_motion_input else None)
    info["seconds_graph_setup"] = time.perf_counter() - t0
    soft = pred = None  # the previous cycle's graph output and net prediction
    for cycle in range(1, cfg.cycles + 1):
        t0 = time.perf_counter()
        parts = ([(motion, motion_weights)] if cycle == 1 or cfg.later_motion else []) + extra
        start = None
        if cycle > 1 and cfg.warm_start:
            start = 0.5 * (torch.from_numpy(soft) + torch.from_numpy(pred))[:, None]
        soft, res = graph_cycle(warper, parts, saliency, cfg, cfg.seed + cycle, start)
        cut = kmeans_threshold(soft, seed=cfg.seed)  # the graph's own object/background split
        stages[f"graph{cycle}"] = stage_probabilities(soft, cut, cfg)
        info[f"power_iterations_graph{cycle}"] = float(res.iterations)
        info[f"seconds_graph{cycle}"] = time.perf_counter() - t0
        if cycle == cfg.cycles:
            break
        t0 = time.perf_counter()
        labels, label_cut = (stages[f"graph{cycle}"], 0.5) if cfg.net_labels == "probability" else (soft, cut)
        pred, ninfo = train_and_predict(net_inputs, torch.from_numpy(labels)[:, None], label_cut, net_cfg,
                                        seed=cfg.seed + cycle)
        pred_cut = kmeans_threshold(pred, seed=cfg.seed)
        stages[f"net{cycle}"] = stage_probabilities(pred, pred_cut, cfg)
        info.update({f"net{cycle}_{k}": v for k, v in ninfo.items()})
        info[f"seconds_net{cycle}"] = time.perf_counter() - t0
        # later cycles: the graph sees its own previous output and the network's masks along chains
        extra = extra[:1] if inp.prior is not None else []
        if cfg.mask_features == "probability":  # the stages as output: their cut is 0.5
            masks = [(stages[f"graph{cycle}"], 0.5), (stages[f"net{cycle}"], 0.5)]
        else:
            masks = [(soft, cut), (pred, pred_cut)]
        extra += [(_above_cut(m, c), torch.ones(1)) for m, c in masks]
    soft = stages[f"graph{cfg.cycles}"]
    if cfg.cycles > 1 and cfg.final != "graph":
        net = stages[f"net{cfg.cycles - 1}"]
        soft = net if cfg.final == "net" else 0.5 * (soft + net)
    return MethodOutput(soft, stages, info)
