"""The flow-backend interface.

Every method consumes dense optical flow between consecutive frames in both directions. A backend
turns a clip of RGB frames into those two stacks; everything downstream only sees arrays.

Conventions used across the package:
- ``frames``: uint8 RGB, shape (T, H, W, 3).
- ``forward[t]``: flow from frame t to frame t+1, shape (T-1, H, W, 2), float32, channel 0 = x
  (horizontal, pixels), channel 1 = y (vertical, pixels), expressed in pixels of the grid it is
  stored on.
- ``backward[t]``: flow from frame t+1 to frame t, same shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..progress import report
from ..registry import Registry


@dataclass
class BidirectionalFlow:
    """Forward and backward flow of one clip, on one pixel grid."""

    forward: np.ndarray  # (T-1, H, W, 2): t -> t+1
    backward: np.ndarray  # (T-1, H, W, 2): t+1 -> t

    def __post_init__(self) -> None:
        if self.forward.shape != self.backward.shape or self.forward.ndim != 4 or self.forward.shape[-1] != 2:
            raise ValueError(
                f"forward/backward flow must both be (T-1,H,W,2); got {self.forward.shape} and {self.backward.shape}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return self.forward.shape[1], self.forward.shape[2]

    def resized(self, height: int, width: int) -> "BidirectionalFlow":
        return BidirectionalFlow(resize_flow(self.forward, height, width), resize_flow(self.backward, height, width))


class FlowBackend:
    """Base class: subclasses implement :meth:`pair_batch` (many pairs at once) and set ``name``."""

    name: str = "base"

    def pair_batch(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Flow from each ``sources[i]`` to ``targets[i]``: (N,H,W,3) uint8 x2 -> (N,H,W,2) float32."""
        raise NotImplementedError

    #: pairs per call of :meth:`pair_batch`: progress is reported between calls
    chunk: int = 8

    def __call__(self, frames: np.ndarray) -> BidirectionalFlow:
        """Forward and backward flow between all consecutive frames of a clip."""
        if frames.ndim != 4 or frames.shape[0] < 2:
            raise ValueError(f"need at least 2 frames of shape (T,H,W,3), got {frames.shape}")
        n = frames.shape[0] - 1
        forward, backward = [], []
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            forward.append(self.pair_batch(frames[s:e], frames[s + 1:e + 1]))
            backward.append(self.pair_batch(frames[s + 1:e + 1], frames[s:e]))
            report("flow", e / n)
        return BidirectionalFlow(np.concatenate(forward).astype(np.float32), np.concatenate(backward).astype(np.float32))


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize flow fields (..., H, W, 2) to (height, width), rescaling the vectors with the grid.

    A displacement of d pixels on a grid of width W is d * width / W pixels on the new grid; resizing
    the field without rescaling its values is the classic bug this function exists to prevent.
    """
    h0, w0 = flow.shape[-3], flow.shape[-2]
    if (h0, w0) == (height, width):
        return flow.astype(np.float32, copy=False)
    lead = flow.shape[:-3]
    flat = flow.reshape((-1, h0, w0, 2))
    interp = cv2.INTER_AREA if height < h0 else cv2.INTER_LINEAR
    out = np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in flat])
    out[..., 0] *= width / w0
    out[..., 1] *= height / h0
    return out.reshape(lead + (height, width, 2)).astype(np.float32)


FLOWS: Registry[Callable[..., FlowBackend]] = Registry("flow backend")
register_flow = FLOWS.register  # decorator: make a backend constructible by name (``--flow NAME``)
available_flows = FLOWS.names


def create_flow(name: str, **kwargs) -> FlowBackend:
    """Build a flow backend by name, like ``timm.create_model``."""
    return FLOWS.get(name)(**kwargs)
