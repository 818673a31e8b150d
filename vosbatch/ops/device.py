"""Where the maths runs: the run's ``--device`` (auto = the actor's GPU when it has one, else the CPU)."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``; anything else as named."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible to this process")
    return device
