"""OpenCV DIS optical flow (Kroeger et al., ECCV 2016): fast, classical, needs no weights."""
from __future__ import annotations

import cv2
import numpy as np

from .base import FlowBackend, register_flow

# name -> (OpenCV preset, finest pyramid level or None for the preset's). OpenCV's presets stop one
# (medium) or two (fast) levels above the input, so their patch flow is on a grid 2x / 4x coarser
# than the frames; "fine" is medium down to the input's own grid (~4x medium's time).
_PRESETS = {
    "ultrafast": (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, None),
    "fast": (cv2.DISOPTICAL_FLOW_PRESET_FAST, None),
    "medium": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, None),
    "fine": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 0),
}


class DISFlow(FlowBackend):
    """DIS on grey frames; one OpenCV object per backend (it is not thread-safe, so don't share)."""

    def __init__(self, preset: str = "medium") -> None:
        if preset not in _PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {sorted(_PRESETS)}")
        self.name = f"dis-{preset}"
        opencv_preset, finest_scale = _PRESETS[preset]
        self._dis = cv2.DISOpticalFlow_create(opencv_preset)
        if finest_scale is not None:
            self._dis.setFinestScale(finest_scale)

    def pair_batch(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        out = []
        for src, dst in zip(sources, targets):
            g0 = cv2.cvtColor(np.ascontiguousarray(src), cv2.COLOR_RGB2GRAY)
            g1 = cv2.cvtColor(np.ascontiguousarray(dst), cv2.COLOR_RGB2GRAY)
            out.append(self._dis.calc(g0, g1, None))
        return np.stack(out).astype(np.float32)


@register_flow("dis")
def _dis_medium(**kwargs) -> DISFlow:
    return DISFlow(kwargs.pop("preset", "medium"))


@register_flow("dis-fast")
def _dis_fast(**kwargs) -> DISFlow:
    return DISFlow("fast")


@register_flow("dis-fine")
def _dis_fine(**kwargs) -> DISFlow:
    return DISFlow("fine")
