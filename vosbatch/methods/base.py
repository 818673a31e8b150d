"""What every method receives and returns. Methods are pure functions: arrays in, soft masks out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch

from ..flow.base import BidirectionalFlow


@dataclass
class MethodInput:
    frames: np.ndarray  # (T,H,W,3) uint8 RGB at the working resolution
    flow: BidirectionalFlow  # at the working resolution
    features: Optional[np.ndarray] = None  # (T,h,w,C) appearance features on the method's grid
    prior: Optional[np.ndarray] = None  # (T,H,W) float32 in [0,1]: another method's masks to refine (--refine-from)
    device: torch.device = torch.device("cpu")  # where the method's tensors live (the run's --device)


@dataclass
class MethodOutput:
    soft: np.ndarray  # (T,h,w) float32 in [0,1], final soft masks
    stages: Dict[str, np.ndarray] = field(default_factory=dict)  # intermediate soft masks, e.g. "init"
    info: Dict[str, float] = field(default_factory=dict)  # diagnostics (iterations, losses...)
    # per-frame quality signals only the method can compute, (T,) each, e.g. globalopt's spectral cut
    signals: Dict[str, np.ndarray] = field(default_factory=dict)
