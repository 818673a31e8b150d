"""Opt-in on-disk cache of per-sequence flow.

Flow is the most expensive input of most methods and does not depend on the method's settings, so
re-running a method (a sweep, a retried batch) can reuse it. The key covers everything the flow
depends on: the backend and its weights and iterations (``backend.fingerprint`` when it has one,
else ``backend.name``), the exact frame content and resolution, and ``key_extra`` for anything else
the caller varies. Entries are float16 ``.npz`` files written to a temporary name and moved into
place with ``os.replace``, so a crash never leaves a half-written entry under a valid name.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .base import BidirectionalFlow, FlowBackend

log = logging.getLogger(__name__)


def backend_fingerprint(backend: FlowBackend) -> str:
    """What identifies a backend's output: name plus weights digest and iterations when it has them."""
    return str(getattr(backend, "fingerprint", None) or backend.name)


def flow_cache_key(backend: FlowBackend, frames: np.ndarray, key_extra: str = "") -> str:
    """File name (without directory) of the cache entry for ``frames`` through ``backend``."""
    frames = np.ascontiguousarray(frames)
    h = hashlib.sha256()
    for part in (backend_fingerprint(backend), str(frames.shape), str(frames.dtype), key_extra):
        h.update(part.encode())
        h.update(b"\0")
    h.update(memoryview(frames).cast("B"))
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", backend.name)
    return f"{name}-{frames.shape[1]}x{frames.shape[2]}-{h.hexdigest()[:32]}.npz"


def _load(path: Path, expected: tuple) -> Optional[BidirectionalFlow]:
    try:
        with np.load(path, allow_pickle=False) as z:
            flow = BidirectionalFlow(z["forward"].astype(np.float32), z["backward"].astype(np.float32))
    except Exception as exc:  # truncated/corrupt file, missing arrays ...
        log.warning("ignoring unreadable flow cache entry %s (%s)", path, exc)
        return None
    if flow.forward.shape != expected:
        log.warning("ignoring flow cache entry %s: shape %s, expected %s", path, flow.forward.shape, expected)
        return None
    return flow


def _save(path: Path, flow: BidirectionalFlow) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, forward=flow.forward.astype(np.float16), backward=flow.backward.astype(np.float16))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_flow(
    backend: FlowBackend,
    frames: np.ndarray,
    cache_dir: Optional[Union[str, Path]],
    key_extra: str = "",
) -> BidirectionalFlow:
    """``backend(frames)``, read from / written to ``cache_dir`` (no caching when it is None).

    Values come back as float32 but are stored as float16 (steps of 1/32 px between 32 and 64 px of
    motion), far below the accuracy of any flow estimate. A miss returns the same rounded values as
    a later hit, so results do not depend on the state of the cache.
    """
    if cache_dir is None:
        return backend(frames)
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / flow_cache_key(backend, frames, key_extra)
    expected = (frames.shape[0] - 1, frames.shape[1], frames.shape[2], 2)
    if path.is_file():
        flow = _load(path, expected)
        if flow is not None:
            return flow
    computed = backend(frames)
    flow = BidirectionalFlow(*(f.astype(np.float16).astype(np.float32) for f in (computed.forward, computed.backward)))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save(path, flow)
    except OSError as exc:  # a full or read-only cache must not fail the sequence
        log.warning("could not write flow cache entry %s (%s)", path, exc)
    return flow
