"""Per-frame CPU work over the CPUs an actor holds.

A GPU actor keeps CPUs for what stays on the CPU (decoding, DIS flow, the dense CRF, the smoother,
PNG encoding). Work that releases the GIL (OpenCV's filters and DIS) runs in threads; pydensecrf holds
the GIL, so the CRF runs in worker processes: loky's reusable executor (through joblib), because once
joblib is imported (scikit-learn and many other libraries a caller may use import it) its semaphores share
the standard library's resource tracker, and a ``ProcessPoolExecutor`` then makes that tracker print a
KeyError for each of them at exit. With one CPU (the default) everything runs in order, in this process.
"""
from __future__ import annotations

import atexit
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Iterable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
_workers = 1
_processes: Optional[Executor] = None
_threads: Optional[ThreadPoolExecutor] = None


def set_cpu_workers(n: int) -> None:
    """Use ``n`` CPUs for per-frame work from now on (an actor calls this with its CPU count)."""
    global _workers, _processes, _threads
    n = max(1, int(n))
    if n != _workers:
        shutdown()
    _workers = n


def cpu_workers() -> int:
    return _workers


def thread_map(fn: Callable[..., T], items: Sequence) -> List[T]:
    """``[fn(x) for x in items]`` over :func:`cpu_workers` threads (for code that releases the GIL)."""
    global _threads
    if _workers == 1 or len(items) < 2:
        return [fn(x) for x in items]
    if _threads is None:
        _threads = ThreadPoolExecutor(_workers, thread_name_prefix="vosbatch-cpu")
    return list(_threads.map(fn, items))


def process_map(fn: Callable[..., T], items: Iterable) -> List[T]:
    """``[fn(x) for x in items]`` over :func:`cpu_workers` processes (``fn`` and the items must pickle)."""
    global _processes
    items = list(items)
    if _workers == 1 or len(items) < 2:
        return [fn(x) for x in items]
    if _processes is None:
        from joblib.externals.loky import get_reusable_executor

        _processes = get_reusable_executor(max_workers=_workers, reuse=False)
    return list(_processes.map(fn, items))


def chunks(n_items: int, parts: int) -> List[slice]:
    """``parts`` contiguous slices covering ``range(n_items)`` (fewer when there are fewer items)."""
    parts = max(1, min(parts, n_items))
    bounds = [round(i * n_items / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def shutdown() -> None:
    """Stop the pools (a change of CPU count). At exit only the threads are stopped here: loky stops its
    own workers, and stopping them again from an atexit hook races its resource tracker's exit."""
    global _processes
    if _processes is not None:
        _processes.shutdown(wait=True)
    _processes = None
    _shutdown_threads()


@atexit.register
def _shutdown_threads() -> None:
    global _threads
    if _threads is not None:
        _threads.shutdown(cancel_futures=True)
    _threads = None
