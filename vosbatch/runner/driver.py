"""The Ray driver: shard sequences over actors that each hold a :class:`VideoSegmenter`.

Why Ray Core actors rather than Ray Data here: the unit of work is a whole video (tens to thousands
of frames that must be optimised *together*), so a "row" would be a video and Ray Data's batching,
block splitting and streaming executor buy nothing while making per-sequence retries and
largest-first ordering harder. An actor pool keeps models loaded once per actor, pulls the next
sequence as soon as it is free (longest first, to avoid a long tail), and streams each result to
storage as it lands.

Faults: when an actor dies mid-sequence (killed, out of memory, node lost) its sequence goes back to
the front of the queue and a fresh actor replaces it, up to ``retries`` times per sequence; the
sequence's files are only ever written whole, so a retry overwrites nothing half-done. A sequence
that still fails gets a ``failed`` metrics row written by the driver.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..config import RunConfig
from ..data.sequence import Sequence
from ..io.fs import s3_environment
from .worker import failed_row

# Environment every actor process needs, wherever it runs (see cli.py for why OMP threads sleep).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0"}


def _import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    return ray


class _Actor:
    """Holds the models for the lifetime of the actor; one sequence per call."""

    def __init__(self, cfg: dict, run_uri: Optional[str], threads: int, flow_cache: Optional[str] = None,
                 board=None) -> None:
        import ray
        import torch

        from ..io.store import RunStore
        from ..pipeline import VideoSegmenter

        from ..ops.parallel import set_cpu_workers

        torch.set_num_threads(max(1, threads))  # Ray sets OMP_NUM_THREADS; torch needs telling too
        os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
        set_cpu_workers(threads)  # per-frame CPU work (DIS, the smoother, the CRF) over the actor's CPUs
        self.segmenter = VideoSegmenter(RunConfig(**cfg), flow_cache=flow_cache)
        self.store = RunStore(run_uri) if run_uri else None
        self.board = board  # a ProgressBoard actor, or None
        self.node = ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Stop the CPU worker processes now: at Ray's teardown they and their resource tracker are killed
        before the actor's exit hooks run, which then warn about them."""
        from ..ops.parallel import shutdown

        shutdown()

    def process(self, seq: Sequence, retries: int = 0) -> Dict:
        from .progress import SequenceProgress
        from .worker import process_sequence

        key = f"{seq.dataset}/{seq.name}"
        progress = SequenceProgress(lambda done: self.board.update.remote(key, done)) if self.board else None
        started = time.time()
        extra = {"retries": retries, "node": self.node}
        row = process_sequence(self.segmenter, seq, self.store, progress, extra=extra)
        if self.segmenter.device.type == "cuda":
            import torch

            row["peak_gpu_gb"] = torch.cuda.max_memory_allocated(self.segmenter.device) / 2**30
        # wall-clock stamps (this host's clock) let the driver measure the gaps between sequences
        return dict(row, _started=started, _finished=time.time())


def _job_runtime_env() -> dict:
    """The runtime env of the Ray job this driver runs in (``ray job submit --runtime-env ...``), if any."""
    import json

    blob = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job manager for job drivers
    if not blob:
        return {}
    try:
        return json.loads(blob).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def default_runtime_env(address: Optional[str]) -> Optional[dict]:
    """What workers of an existing cluster need: this package's code (so every node runs the driver's
    version, whether or not its image has vosbatch installed) and the worker environment, with the S3
    endpoint this process was given (``--s3-endpoint-url``). Its third-party dependencies come from the
    cluster image (cluster/README.md).

    Inside a Ray job, Ray refuses to merge a driver's runtime env that sets a field or variable the
    job's already sets, so whatever the job provides (its ``working_dir``/``py_modules``, its
    variables) is left to the job."""
    if not address:
        return None  # a local cluster's workers inherit the driver's environment and interpreter
    job = _job_runtime_env()
    env: dict = {}
    if not ({"py_modules", "working_dir"} & set(job)):
        env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
    env_vars = {k: v for k, v in {**WORKER_ENV, **s3_environment()}.items() if k not in (job.get("env_vars") or {})}
    if env_vars:
        env["env_vars"] = env_vars
    return env or None


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
              runtime_env: Optional[dict] = None):
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, configure_logging=True, logging_level="WARNING", log_to_driver=True)
        if address:
            # Token auth (cluster/README.md): Ray sends the cluster's token only when RAY_AUTH_MODE=token is set
            # here (for address "auto", also when it finds a token); else it fails with InvalidAuthToken.
            ray.init(address=address, runtime_env=runtime_env or default_runtime_env(address), **kwargs)
        else:
            # A local cluster needs only loopback. Ray finds a node's address by a UDP connect() towards
            # 8.8.8.8:53 (no packet is sent; with no route, as in loopback-ns, it logs "Failed to determine local
            # IP via external connectivity"), and ray.init replaces _node_ip_address="127.0.0.1" by that answer
            # (services.resolve_ip_for_localhost). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes it answer 127.0.0.1
            # without probing: read at import (hence the attribute, for this process) and, from the environment,
            # by the agents that ray.init starts. Only while ray.init runs: it also stops `ray start --address`.
            from ray._private import ray_constants

            os.environ.update({k: v for k, v in WORKER_ENV.items() if k not in os.environ})
            var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR  # "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
            saved = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
            os.environ[var], ray_constants.ENABLE_RAY_CLUSTER = "0", False
            try:
                ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, _node_ip_address="127.0.0.1",
                         runtime_env=runtime_env, **kwargs)
            finally:
                ray_constants.ENABLE_RAY_CLUSTER = saved[1]
                if saved[0] is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = saved[0]
    return ray


@dataclass
class RunStats:
    """What the driver saw: wall time, time actors spent inside sequences, retries."""

    wall_s: float = 0.0
    actors: int = 0
    busy_s: float = 0.0  # sum over sequences of their in-actor seconds
    retries: int = 0
    sequences: int = 0  # sequences that ended (ok or failed) in this session
    startup_s: float = 0.0  # from creating the actors to the first sequence starting (model loading)
    first_started: float = 0.0  # wall clock: the first sequence starts ...
    last_finished: float = 0.0  # ... and the last one ends (their difference: the processing span)
    gap_s_total: float = 0.0  # per actor: previous sequence's end -> next one's start, summed ...
    gaps: int = 0  # ... over this many gaps (running sums: the driver keeps nothing per sequence)

    @property
    def processing_s(self) -> float:
        """Wall time from the first sequence starting to the last one finishing: the span over which
        throughput is measured once the cluster and the actors' models are up."""
        return max(0.0, self.last_finished - self.first_started)

    @property
    def overhead_per_sequence_s(self) -> float:
        """The driver's cost per sequence once actors are up: the time an actor waits between
        finishing one sequence and starting the next (result transfer, the driver's bookkeeping,
        scheduling the next task). Actor start-up is a one-off cost, reported as ``startup_s``."""
        return self.gap_s_total / self.gaps if self.gaps else 0.0


def default_cpus_per_gpu(ray) -> int:
    """The CPUs a GPU actor gets by default: the fewest CPUs per GPU of any node that has GPUs."""
    ratios = [int(n["Resources"].get("CPU", 0) // n["Resources"]["GPU"]) for n in ray.nodes()
              if n.get("Alive") and n["Resources"].get("GPU")]
    return max(1, min(ratios)) if ratios else 1


def _record_failure(store, seq: Sequence, row: Dict) -> None:
    """Write a failed row; if even that cannot be stored the row still reaches the caller (and the
    sequence, having no ``ok`` metrics, is redone by a resumed run)."""
    from ..errors import OutputError

    if store is None:
        return
    try:
        store.write_metrics(seq.dataset, seq.name, row)
    except OutputError as e:
        row["error"] = f"{row['error']}; and its metrics could not be stored: {e}"


def run_sequences(
    sequences: Iterable[Sequence],
    cfg: RunConfig,
    run_uri: Optional[str],
    workers: int = 1,
    gpus: int = 0,
    address: Optional[str] = None,
    on_result: Optional[Callable[[Dict], None]] = None,
    flow_cache: Optional[str] = None,
    cpus_per_worker: Optional[int] = None,
    cpus_per_gpu: Optional[int] = None,
    retries: int = 2,
    runtime_env: Optional[dict] = None,
    on_retry: Optional[Callable[[Sequence, str], None]] = None,
    on_progress: Optional[Callable[[Dict[str, float]], None]] = None,
    stats: Optional[RunStats] = None,
    previous_retries: Optional[Dict[Tuple[str, str], int]] = None,
) -> RunStats:
    """Process ``sequences`` on ``workers`` CPU actors (or ``gpus`` GPU actors), handing each result row to
    ``on_result`` as it lands; returns what the driver saw.

    The sequences are pulled as actors free up (a list longest first, as given), so the driver holds only
    those in flight. ``cpus_per_worker`` fixes each CPU actor's threads (default: the cluster's CPUs shared
    out); a GPU actor gets ``cpus_per_gpu`` CPUs (default: its node's CPUs over its GPUs) and holds two
    sequences, so that one is decoded, its flow computed and the other's masks refined on the CPUs while
    the GPU runs the method. ``on_progress`` gets the frames done of the sequences in flight about once a second.
    ``previous_retries``: retries of a resumed run's sequences, which this run's count adds to.
    """
    stats = stats if stats is not None else RunStats()
    previous_retries = previous_retries or {}
    ray = start_ray(address, num_gpus=gpus or None, runtime_env=runtime_env)
    t_start = time.perf_counter()  # Ray's own start-up is a fixed cost, not a per-sequence one
    from ray.exceptions import GetTimeoutError, RayActorError, WorkerCrashedError

    from .progress import ProgressBoard

    died = (RayActorError, WorkerCrashedError) + tuple(
        getattr(ray.exceptions, n) for n in ("OutOfMemoryError", "NodeDiedError") if hasattr(ray.exceptions, n))
    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    n_actors = max(1, gpus or workers)
    if gpus:
        threads = cpus_per_gpu or default_cpus_per_gpu(ray)
        actor_cls = ray.remote(_Actor).options(num_cpus=threads, num_gpus=1, max_restarts=0, max_concurrency=2)
    else:
        threads = cpus_per_worker or max(1, total_cpus // n_actors)
        actor_cls = ray.remote(_Actor).options(num_cpus=threads, num_gpus=0, max_restarts=0)
    per_actor = 2 if gpus else 1  # sequences in flight per actor
    board = ray.remote(ProgressBoard).options(num_cpus=0).remote() if on_progress else None
    args = (cfg.to_dict(), run_uri, threads, flow_cache, board)
    store = None
    if run_uri:
        from ..io.store import RunStore

        store = RunStore(run_uri)
    pending = iter(sequences)
    retry_queue: deque = deque()  # sequences whose worker died, before anything new
    attempts: Dict[Tuple[str, str], int] = {}  # only sequences that were retried in this session
    events: List[Dict] = []  # retry events not yet written to the run's event log
    last_finished: Dict = {}  # actor -> wall-clock end of its previous sequence
    in_flight: Dict = {}
    replaced: Dict = {}  # a dead actor -> the one that took its place (its other sequence in flight fails too)

    def next_sequence() -> Optional[Sequence]:
        return retry_queue.popleft() if retry_queue else next(pending, None)

    def submit(actor) -> None:
        seq = next_sequence()
        if seq is not None:
            key = (seq.dataset, seq.name)
            in_flight[actor.process.remote(seq, previous_retries.get(key, 0) + attempts.get(key, 0))] = (actor, seq)

    def flush_events() -> None:
        if store is not None and events:
            store.write_events(events)
        events.clear()

    t_created = time.time()
    first = next_sequence()
    actors = []
    if first is not None:
        retry_queue.append(first)  # not lost: submitted first
        if hasattr(sequences, "__len__"):  # no more actors (and model loads) than sequences
            n_actors = min(n_actors, len(sequences))
        actors = [actor_cls.remote(*args) for _ in range(n_actors)]
    stats.actors = len(actors)
    for _ in range(per_actor):
        for a in actors:
            submit(a)
    last_poll = 0.0
    try:
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            if board is not None and time.monotonic() - last_poll >= 1.0:
                last_poll = time.monotonic()
                try:
                    on_progress(ray.get(board.snapshot.remote(), timeout=5))
                except GetTimeoutError:
                    pass
            if not done:
                continue
            ref = done[0]
            actor, seq = in_flight.pop(ref)
            key = (seq.dataset, seq.name)
            try:
                row = ray.get(ref)
            except died as e:  # the process holding the sequence is gone: replace it, retry the sequence
                attempts[key] = attempts.get(key, 0) + 1
                reason = f"worker died on {seq.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if actor not in replaced:
                    ray.kill(actor, no_restart=True)
                    replaced[actor] = actor_cls.remote(*args)
                actor = replaced[actor]
                total = previous_retries.get(key, 0) + attempts[key]
                events.append({"dataset": seq.dataset, "sequence": seq.name, "event": "retry", "attempt": total,
                               "reason": reason, "time": dt.datetime.now(dt.timezone.utc)})
                if len(events) >= 100:
                    flush_events()
                if attempts[key] <= retries:
                    stats.retries += 1
                    if on_retry:
                        on_retry(seq, reason)
                    retry_queue.appendleft(seq)
                    submit(actor)
                    continue
                row = dict(failed_row(seq, cfg, f"{reason} (gave up after {retries} retries)"), retries=total)
                _record_failure(store, seq, row)
            except Exception as e:  # the task raised outside the worker's own handlers
                row = failed_row(seq, cfg, f"worker error on {seq.name}: {type(e).__name__}: {e}")
                _record_failure(store, seq, row)
            attempts.pop(key, None)
            if board is not None:
                board.finish.remote(f"{seq.dataset}/{seq.name}")
            stats.sequences += 1
            stats.busy_s += float(row.get("seconds") or 0.0)
            if "_started" in row:
                if actor in last_finished:
                    stats.gap_s_total += max(0.0, row["_started"] - last_finished[actor])  # 0: it was queued
                    stats.gaps += 1
                elif not stats.startup_s:
                    stats.startup_s = row["_started"] - t_created
                stats.first_started = min(stats.first_started or row["_started"], row["_started"])
                stats.last_finished = max(stats.last_finished, row["_finished"])
                last_finished[actor] = row.pop("_finished")
                row.pop("_started")
            if on_result:
                on_result(row)
            submit(actor)
        closing = [a.close.remote() for a in {*actors, *replaced.values()}]
        ray.wait(closing, num_returns=len(closing), timeout=30)
    finally:
        flush_events()
        stats.wall_s = time.perf_counter() - t_start
    return stats
