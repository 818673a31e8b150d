"""Overlapping windows over a long video, and where one window hands over to the next.

Memory of the per-video methods grows with the number of frames (flows, features, the optimisation
variables), so a 2,000-frame video is cut into windows of ``size`` frames that overlap by
``overlap``. Each window is segmented on its own; in an overlap both windows have a mask for every
frame, and the stitch keeps the earlier window's masks up to the middle of the overlap and the later
window's after it. With a linear cross-fade of the two binary masks (weight ramping 1→0 across the
overlap) a pixel is foreground where the heavier window says so, which is exactly this switch; it
keeps each frame's mask from a window where that frame is well inside, away from the window's edge
where the temporal terms see only one side. The masks the two windows give for the overlap are
compared (IoU), so a stitch that disagrees is visible in the metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List


@dataclass(frozen=True)
class Window:
    start: int  # first frame segmented in this window
    stop: int  # one past the last frame segmented
    keep_start: int  # first frame whose mask this window contributes
    keep_stop: int  # one past the last frame it contributes


def plan_windows(num_frames: int, size: int, overlap: int) -> List[Window]:
    """Windows covering ``range(num_frames)``; every frame is kept from exactly one window.

    A video of at most ``size + overlap`` frames (or ``size <= 0``) is one window: cutting it would
    cost a second window almost all of whose frames the first already did. Longer videos get
    windows of exactly ``size`` frames; the last is pulled back to end at the last frame, so none is
    shorter (short windows give the temporal optimisation little to work with).
    """
    if num_frames <= 0:
        return []
    if size <= 0 or num_frames <= size + overlap:
        return [Window(0, num_frames, 0, num_frames)]
    if not 0 <= overlap < size:
        raise ValueError(f"window overlap {overlap} must be in [0, {size})")
    step = size - overlap
    starts = list(range(0, num_frames - size, step)) + [num_frames - size]
    starts = sorted(set(starts))
    windows = []
    for i, start in enumerate(starts):
        stop = start + size
        keep_start = 0 if i == 0 else (windows[-1].stop + start + 1) // 2  # middle of the overlap
        keep_stop = num_frames if i == len(starts) - 1 else None
        windows.append(Window(start, stop, keep_start, keep_stop or stop))
    # each window hands over where the next one starts keeping
    return [Window(w.start, w.stop, w.keep_start, windows[i + 1].keep_start if i + 1 < len(windows) else w.keep_stop)
            for i, w in enumerate(windows)]
