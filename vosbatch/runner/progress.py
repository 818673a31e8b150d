"""Progress of a batch as the driver shows it: frames done, within sequences too, at frames/s with an ETA.

Actors report through Ray: each holds a handle to one small :class:`ProgressBoard` actor and tells it
how many frames of its current sequence are done (at most once a second, without waiting for an
answer). The driver reads the board while it waits for results, so its bar moves within a long video.
The board only holds the sequences in flight (at most one per actor), whatever the size of the batch.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, Optional

#: Share of a window's work per stage, for turning "stage X is at fraction f" into frames done.
STAGE_WEIGHTS = {"load": 0.05, "flow": 0.25, "method": 0.5, "binarize": 0.2}


class ProgressBoard:
    """Frames done per sequence in flight; a Ray actor (``ray.remote(ProgressBoard)``)."""

    def __init__(self) -> None:
        self._done: Dict[str, float] = {}

    def update(self, key: str, frames_done: float) -> None:
        self._done[key] = frames_done

    def finish(self, key: str) -> None:
        self._done.pop(key, None)

    def snapshot(self) -> Dict[str, float]:
        return dict(self._done)


class SequenceProgress:
    """Actor side: turns one sequence's stage reports into frames done and sends them, rate-limited."""

    def __init__(self, send: Callable[[float], None], min_interval_s: float = 1.0) -> None:
        self._send = send
        self._interval = min_interval_s
        self._last = 0.0
        self._done_before = 0.0  # frames of finished windows
        self._window_frames = 0
        self._stages: Dict[str, float] = {}

    def start_window(self, frames_kept: int) -> None:
        self._done_before += self._window_frames
        self._window_frames = frames_kept
        self._stages = {}

    def __call__(self, stage: str, fraction: float) -> None:
        self._stages[stage] = fraction
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._send(self.frames_done())

    def frames_done(self) -> float:
        share = sum(STAGE_WEIGHTS.get(s, 0.0) * f for s, f in self._stages.items())
        return self._done_before + self._window_frames * min(1.0, share)


class ProgressDisplay:
    """Driver side: a tqdm bar on a terminal; otherwise (or with ``--no-progress``) a one-line status
    every ``interval_s`` seconds, so logs of a long batch still show it moving."""

    def __init__(self, total_frames: int, bar: bool, interval_s: float = 30.0, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total = total_frames
        self.counts = {"ok": 0, "failed": 0, "retried": 0}
        self.finished_frames = 0.0
        self.partial: Dict[str, float] = {}
        self._interval = interval_s
        self._t0 = self._last_line = time.monotonic()
        self._bar = None
        if bar and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_frames, unit="frame", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    @property
    def frames_done(self) -> float:
        return self.finished_frames + sum(self.partial.values())

    def sequence_done(self, key: str, frames: int, status: str) -> None:
        self.partial.pop(key, None)
        self.finished_frames += frames
        self.counts[status] = self.counts.get(status, 0) + 1
        self.refresh()

    def in_flight(self, partial: Dict[str, float]) -> None:
        self.partial = partial
        self.refresh()

    def message(self, text: str) -> None:
        (self._bar.write if self._bar else lambda t: print(t, file=self.stream, flush=True))(text)

    def refresh(self) -> None:
        done = min(self.frames_done, self.total)
        if self._bar is not None:
            self._bar.n = round(done, 1)
            self._bar.set_postfix(ok=self.counts["ok"], failed=self.counts["failed"], retried=self.counts["retried"],
                                  refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last_line >= self._interval:
            self._last_line = now
            self.message(self.status_line(now))

    def status_line(self, now: Optional[float] = None) -> str:
        elapsed = (now or time.monotonic()) - self._t0
        done = min(self.frames_done, self.total)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - done) / rate / 60:.1f} min" if rate > 0 else "-"
        share = 100.0 * done / self.total if self.total else 100.0
        return (f"progress: {done:.0f}/{self.total} frames ({share:.1f} %), {self.counts['ok']} ok, "
                f"{self.counts['failed']} failed, {self.counts['retried']} retried, {rate:.2f} frames/s, ETA {eta}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.total:
            self.message(self.status_line())
