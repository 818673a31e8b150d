"""What every method receives and returns. Methods are pure functions: arrays in, soft masks out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

from ..flow.base import BidirectionalFlow


@dataclass
class MethodInput:
    frames: np.ndarray  # (T,H,W,3) uint8 RGB at the working resolution
    flow: BidirectionalFlow  # at the working resolution
    features: Optional[np.ndarray] = None  # (T,h,w,C) appearance features on the method's grid
    reliable_forward: Optional[np.ndarray] = None  # (T-1,H,W) bool, flow t->t+1 trustworthy
    reliable_backward: Optional[np.ndarray] = None  # (T-1,H,W) bool, flow t+1->t trustworthy
    prior: Optional[np.ndarray] = None  # (T,H,W) float32 in [0,1]: another method's masks to refine (--refine-from)


@dataclass
class MethodOutput:
    soft: np.ndarray  # (T,h,w) float32 in [0,1], final soft masks
    stages: Dict[str, np.ndarray] = field(default_factory=dict)  # intermediate soft masks, e.g. "init"
    info: Dict[str, float] = field(default_factory=dict)  # diagnostics (iterations, losses...)


_REGISTRY: Dict[str, Callable] = {}


def register_method(name: str, config_cls):
    """Register ``fn(MethodInput, config) -> MethodOutput`` with its config dataclass."""

    def wrap(fn):
        _REGISTRY[name] = (fn, config_cls)
        return fn

    return wrap


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]
