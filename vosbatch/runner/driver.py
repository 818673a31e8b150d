"""The Ray driver: shard sequences over actors that each hold a :class:`VideoSegmenter`.

Why Ray Core actors rather than Ray Data here: the unit of work is a whole video (tens to thousands
of frames that must be optimised *together*), so a "row" would be a video and Ray Data's batching,
block splitting and streaming executor buy nothing while making per-sequence retries and
largest-first ordering harder. An actor pool keeps models loaded once per actor, pulls the next
sequence as soon as it is free (longest first, to avoid a long tail), and streams each result to
storage as it lands.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

from ..config import RunConfig
from ..data.sequence import Sequence
from .worker import failed_row


def _import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    return ray


class _Actor:
    """Holds the models for the lifetime of the actor; one sequence per call."""

    def __init__(self, cfg: dict, run_uri: Optional[str], threads: int, flow_cache: Optional[str] = None) -> None:
        import torch

        from ..io.store import RunStore
        from ..pipeline import VideoSegmenter

        torch.set_num_threads(max(1, threads))  # Ray sets OMP_NUM_THREADS; torch needs telling too
        os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
        self.segmenter = VideoSegmenter(RunConfig(**cfg), flow_cache=flow_cache)
        self.store = RunStore(run_uri) if run_uri else None

    def process(self, seq: Sequence) -> Dict:
        from .worker import process_sequence

        return process_sequence(self.segmenter, seq, self.store)


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None):
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, configure_logging=True, logging_level="WARNING", log_to_driver=True)
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A local cluster needs only loopback: pinning the node address stops Ray from probing a
            # public DNS server to discover an external interface it has no use for.
            ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, _node_ip_address="127.0.0.1", **kwargs)
    return ray


def run_sequences(
    sequences: List[Sequence],
    cfg: RunConfig,
    run_uri: Optional[str],
    workers: int = 1,
    gpus: int = 0,
    address: Optional[str] = None,
    on_result: Optional[Callable[[Dict], None]] = None,
    flow_cache: Optional[str] = None,
) -> List[Dict]:
    """Process all sequences on ``workers`` CPU actors (or ``gpus`` GPU actors); returns rows."""
    ray = start_ray(address, num_gpus=gpus or None)
    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    n_actors = max(1, gpus or workers)
    threads = max(1, total_cpus // n_actors)
    actor_cls = ray.remote(_Actor).options(num_cpus=threads if not gpus else 1, num_gpus=1 if gpus else 0, max_restarts=1)
    actors = [actor_cls.remote(cfg.to_dict(), run_uri, threads, flow_cache) for _ in range(min(n_actors, max(1, len(sequences))))]
    queue = sorted(sequences, key=lambda s: -s.num_frames)  # longest first: no long tail at the end
    in_flight: Dict = {}
    rows: List[Dict] = []

    def submit(actor):
        if queue:
            seq = queue.pop(0)
            in_flight[actor.process.remote(seq)] = (actor, seq)

    for a in actors:
        submit(a)
    while in_flight:
        done, _ = ray.wait(list(in_flight), num_returns=1)
        ref = done[0]
        actor, seq = in_flight.pop(ref)
        try:
            row = ray.get(ref)
        except Exception as e:  # the actor died or the task raised outside our handlers
            row = failed_row(seq, cfg, f"worker error on {seq.name}: {type(e).__name__}: {e}")
        rows.append(row)
        if on_result:
            on_result(row)
        submit(actor)
    return rows
