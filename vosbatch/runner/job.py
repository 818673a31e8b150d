"""One batch job end to end, as ``vosbatch submit`` runs it: list the sequences, open (or resume) the
run, shard the work over Ray actors with a progress display, record what happened in ``run.json``.

``run.json`` says how the run stands (``running``, ``done``, ``interrupted`` on Ctrl-C or SIGTERM,
``failed`` with the error when the driver dies on one) and holds the configuration, the inputs and
every submit option, so ``--resume RUN_ID`` continues it as it started: options given explicitly
override the stored ones, and every sequence already finished with the resulting configuration hash
(metrics ``ok`` *and* masks stored) is skipped; failed and missing ones run again. Nothing is written
before the cluster is reachable, so a run id is never blocked by a run that could not start.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple  # noqa: F401

from ..config import RunConfig
from ..errors import InputError, OutputError, VosbatchError
from ..io.store import RunStore
from ..names import unique_names
from .driver import RunStats, run_sequences, start_ray
from .progress import ProgressDisplay


class ClusterError(VosbatchError):
    """The Ray cluster could not be started or reached."""


class Terminated(BaseException):
    """SIGTERM, raised in the driver so that the run is recorded as interrupted (like Ctrl-C)."""


@dataclass
class JobSpec:
    """Where the sequences come from, where results go and how the work is spread."""

    dataset: str = "davis2016"
    data_root: Optional[str] = None
    split: str = "val"
    sequences: Optional[List[str]] = None
    inputs: Optional[List[str]] = None  # generic inputs (videos, frame folders, manifests, s3:// prefixes)
    output: str = "runs"
    run_id: Optional[str] = None
    workers: int = 1
    gpus: int = 0
    cpus_per_worker: Optional[int] = None
    cpus_per_gpu: Optional[int] = None
    address: Optional[str] = None
    retries: int = 2
    s3_endpoint_url: Optional[str] = None
    flow_cache: Optional[str] = None
    runtime_env: Optional[dict] = None
    progress: bool = True
    compact: bool = True  # fold the run's per-sequence files into a few large ones at the end
    extra: Dict[str, Any] = field(default_factory=dict)

    INPUT_FIELDS = ("dataset", "data_root", "split", "sequences", "inputs")
    # submit options a resumed run takes from run.json unless given again
    RESUMED_FIELDS = ("workers", "gpus", "cpus_per_worker", "cpus_per_gpu", "address", "retries", "s3_endpoint_url", "flow_cache",
                      "runtime_env", "progress", "compact")

    def source(self) -> str:
        """What the sequences come from, for messages."""
        return ", ".join(self.inputs) if self.inputs else f"{self.dataset} ({self.data_root or 'downloaded'})"


def run_uri_for(output: str, run_id: str) -> str:
    return f"{output.rstrip('/')}/{run_id}" if "://" in output else str(Path(output).resolve() / run_id)


def list_job_sequences(spec: JobSpec, download: Callable[[str], Path]):
    """The sequences of a job: generic inputs, or a dataset in its official layout (downloaded into
    the cache by ``download`` when no root is given), with names unique within the run. Returns
    (sequences, data_root)."""
    from ..data import input_sequences, list_sequences

    if spec.inputs:
        seqs, root = input_sequences(list(spec.inputs)), None
    else:
        root = Path(spec.data_root) if spec.data_root else download(spec.dataset)
        seqs = list_sequences(spec.dataset, root, split=spec.split, sequences=spec.sequences)
    for seq, name in zip(seqs, unique_names(s.name for s in seqs)):
        seq.name = name
    return seqs, root


def _no_download(dataset: str) -> Path:
    raise InputError(f"{dataset}: no data root given and downloading is not enabled here")


def open_run(spec: JobSpec, cfg: RunConfig, resume: bool, explicit: set) -> tuple:
    """(store, run_id, previous run.json or None, cfg, spec) with a resumed run's settings applied. Writes nothing."""
    if resume:
        if not spec.run_id:
            raise InputError("--resume needs the run id of the run to continue")
        run_uri = run_uri_for(spec.output, spec.run_id)
        store = RunStore(run_uri)
        if not store.exists("run.json"):
            raise InputError(f"{run_uri}: no run.json, so there is no run {spec.run_id!r} to resume")
        previous = store.read_run_info()
        if "preset" not in explicit:  # the stored settings, under the options given now
            known = {f.name for f in dataclasses.fields(RunConfig)}
            base = {k: v for k, v in previous.get("config", {}).items() if k in known}
            base.update({k: v for k, v in cfg.to_dict().items() if k in explicit})
            cfg = RunConfig(**base)
        for name in JobSpec.INPUT_FIELDS:
            if name not in explicit and name in previous:
                setattr(spec, name, previous[name])
        for name in JobSpec.RESUMED_FIELDS:
            if name not in explicit and name in (previous.get("job") or {}):
                setattr(spec, name, previous["job"][name])
        return store, spec.run_id, previous, cfg, spec
    run_id = spec.run_id or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{cfg.digest()[:6]}"
    spec.run_id = run_id
    store = RunStore(run_uri_for(spec.output, run_id))
    if store.exists("run.json"):
        raise InputError(f"{store.uri} already holds a run: pass --resume to continue it or choose another --run-id")
    return store, run_id, None, cfg, spec


def check_output_writable(output: str) -> None:
    """Fail early, naming the location, when nothing can be written under OUTPUT (a probe object beside the
    run, deleted at once: the run's own folder stays untouched)."""
    probe = RunStore(output)
    rel = f".vosbatch-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe._put_bytes(rel, b"ok")
    except OutputError as e:
        raise OutputError(f"output not writable: {e}") from e
    probe.delete(rel)


def _check_reachable(address: Optional[str]) -> None:
    """A cluster address given as host:port must accept a connection, within seconds: Ray itself retries
    an unreachable address for minutes before it gives up."""
    if not address or address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if port.isdigit():
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=10):
            pass


def resume_command(spec: JobSpec) -> str:
    """The command that finishes this run (run.json restores everything else)."""
    cmd = ["vosbatch", "submit", "--output", spec.output, "--resume", spec.run_id]
    if spec.s3_endpoint_url:
        cmd += ["--s3-endpoint-url", spec.s3_endpoint_url]
    return " ".join(shlex.quote(c) for c in cmd)


def _previous_retries(store: RunStore, keys: set) -> Dict[Tuple[str, str], int]:
    """Retries already spent on the sequences a resumed run runs again (their metrics rows)."""
    rows = store.read_metrics(columns=["dataset", "sequence", "retries"])
    return {(r["dataset"], r["sequence"]): int(r["retries"] or 0) for r in rows
            if (r["dataset"], r["sequence"]) in keys and r.get("retries")}


def run_job(spec: JobSpec, cfg: RunConfig, resume: bool = False, explicit: Optional[set] = None,
            download: Optional[Callable[[str], Path]] = None, echo: Callable[[str], None] = print,
            code: Optional[dict] = None, host: Optional[dict] = None) -> Dict[str, Any]:
    """Run (or resume) a job; returns {"info", "stats", "store", "skipped", "elapsed", "counts", "all_rows"}."""
    store, run_id, previous, cfg, spec = open_run(spec, cfg, resume, explicit or set())
    check_output_writable(spec.output)
    seqs, root = list_job_sequences(spec, download or _no_download)
    done = store.completed(cfg.digest()) if previous else set()
    todo = sorted((s for s in seqs if (s.dataset, s.name) not in done), key=lambda s: -s.num_frames)  # longest first
    previous_retries = _previous_retries(store, {(s.dataset, s.name) for s in todo}) if previous else {}
    try:  # reach the cluster before writing anything (with nothing to do, no cluster is needed)
        if todo:
            _check_reachable(spec.address)
            start_ray(spec.address, num_gpus=spec.gpus or None, runtime_env=spec.runtime_env)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds (ConnectionError, RuntimeError, ...)
        where = f"the Ray cluster at {spec.address}" if spec.address else "a local Ray instance"
        raise ClusterError(f"cannot reach {where}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    info = dict(previous or {})
    info.pop("sequence_names", None)  # written by 0.1.0; a corpus's names do not belong in run.json
    info.update({
        "run_id": run_id, "config": cfg.to_dict(), "config_hash": cfg.digest(), "preset": cfg.preset,
        "dataset": None if spec.inputs else spec.dataset, "data_root": str(root) if root else spec.data_root,
        "split": None if spec.inputs else spec.split, "sequences": spec.sequences, "inputs": spec.inputs,
        "sequences_listed": len(seqs), "status": "running", "error": None,
        "job": {name: getattr(spec, name) for name in JobSpec.RESUMED_FIELDS},
    })
    info.setdefault("started", now)
    if code is not None:
        info["code"] = code
    if host is not None:
        info["host"] = host
    if previous:
        info["resumed"] = list(previous.get("resumed", [])) + [{"at": now, "skipped": len(seqs) - len(todo)}]
    store.write_run_info(info)
    total_frames = sum(s.num_frames for s in todo)
    source = ", ".join(spec.inputs) if spec.inputs else f"{spec.dataset} from {root}"
    echo(f"vosbatch: {len(todo)} sequences ({total_frames} frames) of {source}; preset={cfg.preset} "
         f"method={cfg.method} flow={cfg.flow} features={cfg.features}; run {store.uri}")
    if previous:
        echo(f"resume: {len(seqs) - len(todo)} of {len(seqs)} sequences already done with config {cfg.digest()}; "
             f"running {len(todo)}")
    display = ProgressDisplay(total_frames, bar=spec.progress, interval_s=30.0 if spec.progress else 10.0)

    def on_result(row):
        display.sequence_done(f"{row['dataset']}/{row['sequence']}", row.get("frames") or 0, row["status"])
        if row["status"] != "ok":
            display.message(f"FAILED {row['sequence']}: {str(row['error']).splitlines()[0]}")

    def on_retry(seq, reason):
        display.counts["retried"] += 1
        display.message(f"RETRY {seq.name}: {reason}")

    def terminated(signum, frame):
        raise Terminated()

    stats = RunStats()
    t0 = time.time()
    previous_handler = signal.signal(signal.SIGTERM, terminated)
    try:
        if todo:
            run_sequences(todo, cfg, store.uri, workers=spec.workers, gpus=spec.gpus, address=spec.address,
                          on_result=on_result, flow_cache=spec.flow_cache, cpus_per_worker=spec.cpus_per_worker,
                          cpus_per_gpu=spec.cpus_per_gpu,
                          retries=spec.retries, runtime_env=spec.runtime_env, on_retry=on_retry,
                          on_progress=display.in_flight, stats=stats, previous_retries=previous_retries)
        display.close()
        if spec.compact:
            result = store.compact()
            echo(f"compacted {result.added} sequences into {len(result.files.get('masks', []))} mask and "
                 f"{len(result.files.get('metrics', []))} metrics files (generation {result.generation})")
    except BaseException as e:
        display.close()
        interrupt = _interruption(e)
        if interrupt is not None:
            _finish(store, info, t0, previous, stats, "interrupted", None)
            echo(f"interrupted ({'SIGTERM' if isinstance(interrupt, Terminated) else 'Ctrl-C'}): {stats.sequences} "
                 f"sequences finished in this session; to finish the run: {resume_command(spec)}")
            raise interrupt from None
        _finish(store, info, t0, previous, stats, "failed", f"{type(e).__name__}: {e}")
        echo(f"the run failed ({type(e).__name__}); to finish it: {resume_command(spec)}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    # this session's rows and a resumed run's earlier ones: the columns a summary needs, not whole rows
    metrics = store.read_metrics_table(["dataset", "sequence", "status", "retries", "frames", "j_mean", "j_recall",
                                        "j_decay", "f_mean", "f_recall", "f_decay", "init_j_mean"])
    _finish(store, info, t0, previous, stats, "done", None, metrics)
    return {"metrics": metrics, "info": info, "stats": stats, "store": store, "skipped": len(seqs) - len(todo),
            "elapsed": time.time() - t0, "counts": display.counts}


def _interruption(e: BaseException) -> Optional[BaseException]:
    """The Ctrl-C or SIGTERM behind ``e``, if any: raised inside Ray's Cython calls (``ray.wait``), it can
    surface as a ``SystemError`` whose context is the interruption."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (KeyboardInterrupt, Terminated)):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _finish(store: RunStore, info: dict, t0: float, previous: Optional[dict], stats: RunStats, status: str,
            error: Optional[str], metrics=None) -> None:
    """Record how the run stands in run.json (never raising over the error that brought us here)."""
    elapsed = time.time() - t0
    info.update(status=status, error=error, finished=dt.datetime.now(dt.timezone.utc).isoformat(),
                seconds=(info.get("seconds") or 0.0) + elapsed if previous else elapsed,
                driver_overhead_s_per_sequence=round(stats.overhead_per_sequence_s, 4),
                actor_startup_s=round(stats.startup_s, 2), processing_s=round(stats.processing_s, 2))
    try:
        if metrics is not None and metrics.num_rows:
            import pyarrow.compute as pc

            ok = int(pc.sum(pc.equal(metrics.column("status"), "ok")).as_py() or 0)
            info.update(sequences_ok=ok, sequences_failed=metrics.num_rows - ok,
                        retries=int(pc.sum(metrics.column("retries")).as_py() or 0))
        store.write_run_info(info)
    except VosbatchError as e:
        print(f"could not record status {status!r} in {store.uri}/run.json: {e}")
