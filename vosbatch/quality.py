"""How good is a mask, without ground truth: signals every run has, and a small calibrated model.

A run of pseudo-labels ranges from J < 0.3 to J > 0.9 between videos, and its users need to know which
to keep. Every frame gets a few signals computed from what the run has anyway, and a transparent model
(a logistic function of a handful of them, coefficients in ``quality_models/<method>.json``, fitted on
DAVIS 2016 val by ``jobs/fit_quality.py``) turns them into the predicted J of each frame; the sequence's
is the mean of its frames'. The raw signals are stored beside the estimate, so a model can be refitted on stored runs.

Signals (per frame; a sequence takes their means, plus the spread of its masks' area):

* ``stage_iou``: agreement of the method with itself: IoU of the output with its first, motion-only stage
  (globalopt's initialisation, IKE's first graph);
* ``temporal_iou``: IoU of each mask with its neighbours' masks warped onto it by the flow;
* ``refine_iou``: IoU of the output mask with the method's soft mask cut at 0.5 (how much the
  refinement changed it);
* ``area``: the share of the frame the mask covers (empty and full masks are suspect);
* ``border``: the share of the frame's border the mask covers (objects are framed away from the edges);
* ``unreliable_flow``: the share of pixels whose forward and backward flow disagree;
* ``spectral_cut`` (globalopt): the relaxed normalised cut 1 − λ₂ of the frame's affinity, from the
  method's own eigen-solve (:mod:`vosbatch.ops.spectral`): a frame with no clean split into object and
  background has no clear object to find.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Dict, Mapping, Optional

import numpy as np
import torch

from .flow.base import BidirectionalFlow, resize_flow
from .flow.reliability import consistency_reliability
from .ops.grid import bilinear_resize
from .ops.warp import backward_warp

FRAME_SIGNALS = ("stage_iou", "temporal_iou", "refine_iou", "area", "border", "unreliable_flow")
METHOD_SIGNALS = ("spectral_cut",)  # what a method may add (MethodOutput.signals)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame IoU of two (T,h,w) bool stacks; two empty masks agree (1)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _first_stage(stages: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    """The method's first, motion-only stage (globalopt's initialisation, IKE's first graph): the closest thing
    to a second opinion the method has. Later stages are fitted to each other's output (IKE's graph and
    network exchange labels), so their agreement is high by construction."""
    if "init" in stages:
        return stages["init"]
    graphs = sorted((k for k in stages if k.startswith("graph")), key=lambda k: int(k[5:]))
    return stages[graphs[0]] if graphs else None


def _on_grid(x: np.ndarray, hw) -> np.ndarray:
    return x if x.shape[1:] == tuple(hw) else bilinear_resize(np.asarray(x, np.float32), hw).numpy()


def frame_signals(soft: np.ndarray, stages: Mapping[str, np.ndarray], flow: BidirectionalFlow,
                  masks: np.ndarray, method_signals: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """The signals of each frame of a window: ``soft`` (T,h,w) the method's output on its grid, ``stages`` its
    intermediate soft masks, ``flow`` on the working grid, ``masks`` (T,H,W) bool the binarised output,
    ``method_signals`` the method's own (METHOD_SIGNALS), passed through."""
    t_len, h, w = soft.shape
    fg = soft > 0.5
    out: Dict[str, np.ndarray] = {}
    first = _first_stage(stages)
    out["stage_iou"] = _iou(_on_grid(first, (h, w)) > 0.5, fg) if first is not None else np.ones(t_len)
    # neighbours' masks warped onto each frame (backward warping: frame t samples t+1 at q + flow_{t->t+1}(q))
    fwd = torch.from_numpy(resize_flow(flow.forward, h, w))
    bwd = torch.from_numpy(resize_flow(flow.backward, h, w))
    m = torch.from_numpy(fg.astype(np.float32))[:, None]
    next_on_t, _ = backward_warp(m[1:], fwd)  # frame t+1's mask on frame t
    prev_on_t, _ = backward_warp(m[:-1], bwd)  # frame t's mask on frame t+1
    agree = np.zeros(t_len)
    count = np.zeros(t_len)
    agree[:-1] += _iou(fg[:-1], next_on_t[:, 0].numpy() > 0.5)
    count[:-1] += 1
    agree[1:] += _iou(fg[1:], prev_on_t[:, 0].numpy() > 0.5)
    count[1:] += 1
    out["temporal_iou"] = agree / np.maximum(count, 1)
    H, W = masks.shape[1:]
    up = _on_grid(soft, (H, W)) > 0.5
    out["refine_iou"] = _iou(masks, up)
    out["area"] = masks.reshape(t_len, -1).mean(1)
    border = np.concatenate([masks[:, 0, :], masks[:, -1, :], masks[:, 1:-1, 0], masks[:, 1:-1, -1]], axis=1)
    out["border"] = border.mean(1)
    rel = consistency_reliability(flow)
    bad = np.zeros(t_len)
    bad[:-1] += 1.0 - rel.forward.reshape(t_len - 1, -1).mean(1)
    bad[1:] += 1.0 - rel.backward.reshape(t_len - 1, -1).mean(1)
    out["unreliable_flow"] = bad / count.clip(1)
    for name, values in (method_signals or {}).items():
        if name not in METHOD_SIGNALS or np.shape(values) != (t_len,):
            raise ValueError(f"method signal {name!r} {np.shape(values)}: need one of {METHOD_SIGNALS}, shape ({t_len},)")
        out[name] = np.asarray(values)
    return {k: v.astype(np.float64) for k, v in out.items()}


def sequence_signals(frames: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """A sequence's signals: the mean of each frame signal, and how much the mask's area varies
    (its coefficient of variation over the frames)."""
    out = {k: float(np.mean(v)) for k, v in frames.items()}
    area = np.asarray(frames["area"], np.float64)
    out["area_cv"] = float(area.std() / max(area.mean(), 1e-6))
    return out


@dataclass
class LogisticModel:
    """quality = σ(bias + Σ weight_k · signal_k): a predicted J in [0, 1]."""

    bias: float
    weights: Dict[str, float] = field(default_factory=dict)

    def predict(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        z = np.full(np.shape(next(iter(signals.values()))), self.bias, np.float64)
        for name, w in self.weights.items():
            z = z + w * np.asarray(signals[name], np.float64)
        return 1.0 / (1.0 + np.exp(-z))


@dataclass
class QualityModel:
    """A method's calibrated estimate of each frame's J. A sequence's estimate is the mean of its frames':
    a sequence's J is the mean of its frames' J, and a model fitted on ~1,300 frames generalises where a
    second one fitted on 20 sequences would not."""

    method: str
    frame: LogisticModel
    fitted_on: str = ""

    def frames(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.frame.predict(signals)

    @staticmethod
    def sequence(frame_quality: np.ndarray) -> float:
        return float(np.mean(frame_quality))

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "fitted_on": self.fitted_on,
                           "frame": {"bias": self.frame.bias, "weights": self.frame.weights},
                           "sequence": "mean of the frames' estimates"}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "QualityModel":
        d = json.loads(text)
        return cls(d["method"], LogisticModel(**d["frame"]), d.get("fitted_on", ""))


@lru_cache(maxsize=None)
def load_model(method: str) -> Optional[QualityModel]:
    """The shipped model of ``method`` (None when none was fitted: the run then has no estimate); read once
    per process, not once per sequence."""
    try:
        text = resources.files("vosbatch").joinpath("quality_models", f"{method}.json").read_text()
    except (FileNotFoundError, OSError):
        return None
    return QualityModel.from_json(text)


def finite_or_none(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None
