"""IKE's settings (no torch here: a driver checks them without loading the maths)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List


@dataclass
class NetConfig:
    """Training of the per-video network: whole frames, AdamW with a one-cycle schedule."""

    width: int = 8  # channels of the first stage (x2, x4 below)
    steps: int = 300  # AdamW steps per network (>= 1)
    batch: int = 2  # frames per step
    lr: float = 3e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    ce_weight: float = 0.5  # λ1, weight of the cross-entropy on the binarised labels
    dice_weight: float = 0.5  # λ2, weight of the soft Dice on the soft labels


@dataclass
class GraphConfig:
    """The space-time graph M (Eq. M in :mod:`.graph`) and the power iteration on P·M·P."""

    stride: int = 2  # working pixels per node (1: one node per working pixel, as the paper)
    chain_length: int = 15  # p: chain steps followed in each direction (the authors' 15)
    chain_sigma: float = 4.0  # σ of an edge's Gaussian weight g(k) = exp(-k²/2σ²), k in frames (the authors' ≈ 4)
    ridge: float = 1.0  # P's ridge regulariser per node: α = ridge × nodes (> 0)
    power_max_iter: int = 20  # power iteration cap (the authors' 20)
    power_tol: float = 1e-3  # stop when the unit eigenvector changes by less than this (L2)


@dataclass
class NodeFeatureConfig:
    """What describes a node: camera-compensated motion collected along its chain."""

    window: int = 7  # q: features collected over the 2q+1 frames of the chain around the node
    sigma: float = 4.0  # offset k weighted by exp(-k²/2σ²), in frames (0: every offset weighs 1)
    background_layers: int = 2  # static depth layers removed from the flow: 1 (a homography) or 2 (where GRIC finds depth)
    epipolar: bool = True  # add each pixel's distance from the background's epipolar geometry (parallax of near surfaces)
    epipolar_weight: float = math.sqrt(2.0)  # that feature's weight after unit-RMS scaling (> 0)


@dataclass
class IkeConfig:
    graph: GraphConfig = field(default_factory=GraphConfig)
    features: NodeFeatureConfig = field(default_factory=NodeFeatureConfig)
    net: NetConfig = field(default_factory=NetConfig)
    cycles: int = 3  # graph stages; a network is trained between consecutive ones (>= 1)
    sharpness: float = 3.0  # s of a stage's output σ(s·(logit x − logit τ)), τ its K-means cut (stage_probabilities)
    seed: int = 0  # RANSAC samples, the power iteration's start, the networks' weights and batches

    def __post_init__(self) -> None:
        """Refuse an impossible setting when the job is configured, not when its first video reaches it."""
        if self.features.background_layers not in (1, 2):
            raise ValueError(f"IKE features.background_layers={self.features.background_layers!r}: choose 1 or 2")
        if self.cycles < 1:
            raise ValueError(f"IKE cycles={self.cycles!r}: at least 1")


def stage_names(cfg: IkeConfig) -> List[str]:
    """The stages :func:`ike` outputs besides its result, in order (graph1, net1, ..., graphN): known
    before it runs, so that a job can reject a request for a stage that will not exist up front."""
    return [name for cycle in range(1, cfg.cycles + 1) for name in (f"graph{cycle}", f"net{cycle}")][:-1]
