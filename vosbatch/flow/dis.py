"""OpenCV DIS optical flow (Kroeger et al., ECCV 2016): fast, classical, needs no weights."""
from __future__ import annotations

import threading

import cv2
import numpy as np

from ..ops.parallel import thread_map

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
    """DIS on grey frames. An OpenCV DIS object is not thread-safe, so each thread has its own: pairs run in
    the actor's threads (OpenCV releases the GIL, :mod:`vosbatch.ops.parallel`)."""

    def __init__(self, preset: str = "medium") -> None:
        if preset not in _PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {sorted(_PRESETS)}")
        self.name = f"dis-{preset}"
        self._preset = _PRESETS[preset]
        self._local = threading.local()

    def _dis(self):
        dis = getattr(self._local, "dis", None)
        if dis is None:
            opencv_preset, finest_scale = self._preset
            dis = self._local.dis = cv2.DISOpticalFlow_create(opencv_preset)
            if finest_scale is not None:
                dis.setFinestScale(finest_scale)
        return dis

    def pair_batch(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        def one(i: int) -> np.ndarray:
            g0 = cv2.cvtColor(np.ascontiguousarray(sources[i]), cv2.COLOR_RGB2GRAY)
            g1 = cv2.cvtColor(np.ascontiguousarray(targets[i]), cv2.COLOR_RGB2GRAY)
            return self._dis().calc(g0, g1, None)

        return np.stack(thread_map(one, range(len(sources)))).astype(np.float32)


@register_flow("dis")
def _dis_medium(**kwargs) -> DISFlow:
    return DISFlow(kwargs.pop("preset", "medium"))


@register_flow("dis-fast")
def _dis_fast(**kwargs) -> DISFlow:
    return DISFlow("fast")


@register_flow("dis-fine")
def _dis_fine(**kwargs) -> DISFlow:
    return DISFlow("fine")
