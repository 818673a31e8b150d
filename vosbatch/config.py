"""Run configuration: everything that changes the masks, hashed so that a resumed run skips finished work.

Defaults live here and only here: the CLI, the jobs and the presets (:mod:`vosbatch.presets`) read
them from these dataclasses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional

REFINEMENTS = ("crf", "fgs", "none")  # RunConfig.refine; implemented in postprocess.binarize


@dataclass
class RunConfig:
    """One run's settings. ``method_params`` holds the method's own settings (``-p KEY=VALUE``; dotted keys
    reach a group, e.g. ``net.steps``), resolved against its config dataclass (:mod:`vosbatch.methods`)."""

    preset: Optional[str] = None  # the preset these settings started from (vosbatch.presets); not hashed
    method: str = "globalopt"  # globalopt | ike
    method_params: Dict[str, Any] = field(default_factory=dict)
    flow: str = "auto"  # optical flow: auto (raft-small on a GPU, dis-fine on a CPU) | dis-fine | dis | dis-fast | raft-small | raft
    flow_weights: Optional[str] = None  # checkpoint of a learned flow backend (default: the cache, else downloaded)
    flow_iters: int = 12  # refinement iterations of learned (RAFT) flow, >= 1
    flow_height: int = 480  # flow is estimated at this height (px, never above the input's); 0: at work_height
    features: str = "colour"  # appearance features of globalopt's affinity: colour, dino-*, dinov2-vits14
    feature_weights: Optional[str] = None  # local checkpoint of a ViT feature backend (official DINO .pth layouts)
    work_height: int = 240  # processing height (px, aspect kept, never upsampled); masks return at full size
    appearance_weight: float = 2.0  # weight of the per-video colour model's log-odds when binarising, >= 0 (0: off)
    refine: str = "crf"  # before the threshold: crf (smoother, then dense CRF) | fgs (the smoother alone) | none
    # the refinement that scores intermediate stages (IKE's cycles, globalopt's init) when there is ground truth;
    # None: as ``refine``. Never changes the output masks; the smoother alone costs a quarter of the CRF
    stage_refine: Optional[str] = "fgs"
    window_frames: int = 100  # videos longer than this (plus the overlap) run in windows of this many frames
    window_overlap: int = 16  # frames shared by consecutive windows, in [0, window_frames)
    refine_from: Optional[str] = None  # a run or DAVIS-layout PNG folder whose masks the method refines
    device: str = "auto"  # where the models run: auto (the actor's GPU if it has one) | cpu | cuda
    seed: int = 0  # seeds every random choice (RANSAC samples, networks, K-means)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of what determines the output: the resolved method settings (so ``-p`` repeating a
        default hashes alike), not the preset's name or where the output goes."""
        from .methods import get_method

        d = self.to_dict()
        d.pop("preset")
        try:
            d["method_params"] = dataclasses.asdict(get_method(self.method).config(self.method_params))
        except ValueError:  # an unknown method or parameter fails elsewhere, with its own message
            pass
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def nest_params(params: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"net.steps": 100, "cycles": 2}`` -> ``{"net": {"steps": 100}, "cycles": 2}`` (dotted keys nest)."""
    out: Dict[str, Any] = {}
    for key, value in params.items():
        head, _, rest = key.partition(".")
        if rest:
            value = {rest: value}
        if isinstance(value, Mapping):
            value = nest_params(value)
            if isinstance(out.get(head), dict):
                value = merge_params(out[head], value)
        out[head] = value
    return out


def merge_params(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Deep merge of nested parameter dicts; ``override`` wins."""
    out = dict(base)
    for key, value in nest_params(override).items():
        out[key] = merge_params(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_from_params(cls: type, params: Mapping[str, Any]):
    """Build dataclass ``cls`` from (nested or dotted) parameters; an unknown name is a ValueError listing the
    known ones. A field whose default is a dataclass is a group, filled from a nested dict."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: Dict[str, Any] = {}
    for key, value in nest_params(params).items():
        if key not in fields:
            raise ValueError(f"unknown parameter {key!r} of {cls.__name__}; known: {', '.join(fields)}")
        f = fields[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ValueError(f"parameter {key!r} is a group ({', '.join(x.name for x in dataclasses.fields(default))}): "
                                 f"set its members as {key}.NAME=VALUE")
            value = config_from_params(type(default), value)
        kwargs[key] = value
    return cls(**kwargs)


def parse_method_params(items: Iterable[str]) -> Dict[str, Any]:
    """``["lam=1", "net.steps=100"]`` -> {"lam": 1, "net": {"steps": 100}}: JSON values, else strings
    (the ``-p KEY=VALUE`` options of the CLI and the jobs)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out = merge_params(out, {key.strip(): parsed})
    return out
