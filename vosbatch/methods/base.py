"""What every method receives and returns. Methods are pure functions: arrays in, soft masks out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..config import config_from_params
from ..flow.base import BidirectionalFlow
from ..registry import Registry


@dataclass
class MethodInput:
    frames: np.ndarray  # (T,H,W,3) uint8 RGB at the working resolution
    flow: BidirectionalFlow  # at the working resolution
    features: Optional[np.ndarray] = None  # (T,h,w,C) appearance features on the method's grid
    prior: Optional[np.ndarray] = None  # (T,H,W) float32 in [0,1]: another method's masks to refine (--refine-from)


@dataclass
class MethodOutput:
    soft: np.ndarray  # (T,h,w) float32 in [0,1], final soft masks
    stages: Dict[str, np.ndarray] = field(default_factory=dict)  # intermediate soft masks, e.g. "init"
    info: Dict[str, float] = field(default_factory=dict)  # diagnostics (iterations, losses...)


@dataclass(frozen=True)
class Method:
    """A registered method: ``run(MethodInput, config) -> MethodOutput`` and its config dataclass.

    ``feature_grid(work_hw, config)``: the grid its appearance features must be computed on (None: it
    uses none). ``stage_names(config)``: the intermediate stages it outputs, known before it runs."""

    run: Callable[[MethodInput, Any], MethodOutput]
    config_cls: type
    feature_grid: Optional[Callable[[Tuple[int, int], Any], Tuple[int, int]]] = None
    stage_names: Callable[[Any], List[str]] = lambda cfg: []

    def config(self, params: Optional[Mapping[str, Any]] = None):
        """The method's configuration from ``-p`` parameters (dotted keys reach nested groups)."""
        return config_from_params(self.config_cls, params or {})


METHODS: Registry[Method] = Registry("method")
available_methods = METHODS.names
get_method = METHODS.get


def register_method(name: str, config_cls: type, feature_grid=None, stage_names=None):
    """Register ``fn(MethodInput, config) -> MethodOutput`` under ``name`` (``--method NAME``)."""

    def wrap(fn):
        METHODS.register(name)(Method(fn, config_cls, feature_grid, stage_names or (lambda cfg: [])))
        return fn

    return wrap
