"""Progress inside one sequence: the stages say how far they are, and whoever listens is told.

The maths never knows about Ray or progress bars: a stage calls :func:`report` with its name and the
fraction of its work done, which costs nothing when nobody listens. A Ray actor listens while it
segments a sequence (:mod:`vosbatch.runner.progress`) and forwards a rate-limited "frames done" to the
driver, so the driver's bar moves within a long video, not only when a whole video finishes.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

Listener = Callable[[str, float], None]
_listener: ContextVar[Optional[Listener]] = ContextVar("vosbatch_progress_listener", default=None)


def report(stage: str, fraction: float) -> None:
    """``stage`` ("flow", "method", "binarize"...) has done ``fraction`` (0..1) of its work on this window."""
    listener = _listener.get()
    if listener is not None:
        listener(stage, min(1.0, max(0.0, float(fraction))))


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send this context's reports to ``listener(stage, fraction)``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


@contextmanager
def span(lo: float, hi: float) -> Iterator[None]:
    """Reports made inside cover ``[lo, hi]`` of the enclosing stage (a step of a longer stage)."""
    outer = _listener.get()
    if outer is None:
        yield
        return
    with listening(lambda stage, fraction: outer(stage, lo + (hi - lo) * fraction)):
        yield
