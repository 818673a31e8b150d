"""One batch job end to end, as ``vosbatch submit`` runs it: list the sequences, open (or resume) the
run, shard the work over Ray actors with a progress bar, record what happened in ``run.json``.

Resuming (``resume=True`` with an existing run id) reads the run's ``run.json``: its configuration and
inputs are the defaults, any option the user gives explicitly overrides them, and every sequence
already finished with the resulting configuration hash (metrics ``ok`` *and* masks stored) is
skipped; failed and missing ones run again.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..config import RunConfig
from ..errors import InputError, OutputError
from ..io.store import RunStore
from .driver import RunStats, run_sequences


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
    address: Optional[str] = None
    retries: int = 2
    s3_endpoint_url: Optional[str] = None
    flow_cache: Optional[str] = None
    runtime_env: Optional[dict] = None
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    INPUT_FIELDS = ("dataset", "data_root", "split", "sequences", "inputs")


def run_uri_for(output: str, run_id: str) -> str:
    return f"{output.rstrip('/')}/{run_id}" if "://" in output else str(Path(output).resolve() / run_id)


def list_job_sequences(spec: JobSpec, download: Callable[[str], Path]):
    """The sequences of a job: generic inputs, or a dataset in its official layout (downloaded into
    the cache by ``download`` when no root is given). Returns (sequences, data_root)."""
    from ..data import input_sequences, list_sequences

    if spec.inputs:
        return input_sequences(list(spec.inputs)), None
    root = Path(spec.data_root) if spec.data_root else download(spec.dataset)
    return list_sequences(spec.dataset, root, split=spec.split, sequences=spec.sequences), root


def _no_download(dataset: str) -> Path:
    raise InputError(f"{dataset}: no data root given and downloading is not enabled here")


def open_run(spec: JobSpec, cfg: RunConfig, resume: bool, explicit: set) -> tuple:
    """(store, run_id, previous run.json or None, cfg, spec) with a resumed run's settings applied."""
    if resume:
        if not spec.run_id:
            raise InputError("--resume needs the run id of the run to continue")
        run_uri = run_uri_for(spec.output, spec.run_id)
        store = RunStore(run_uri, endpoint_url=spec.s3_endpoint_url)
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
        return store, spec.run_id, previous, cfg, spec
    run_id = spec.run_id or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{cfg.digest()[:6]}"
    spec.run_id = run_id
    store = RunStore(run_uri_for(spec.output, run_id), endpoint_url=spec.s3_endpoint_url)
    if store.exists("run.json"):
        raise InputError(f"{store.uri} already holds a run: pass --resume to continue it or choose another --run-id")
    return store, run_id, None, cfg, spec


def run_job(spec: JobSpec, cfg: RunConfig, resume: bool = False, explicit: Optional[set] = None,
            download: Optional[Callable[[str], Path]] = None, echo: Callable[[str], None] = print,
            code: Optional[dict] = None, host: Optional[dict] = None) -> Dict[str, Any]:
    """Run (or resume) a job; returns {"rows", "info", "stats", "store", "skipped"}."""
    from tqdm import tqdm

    store, run_id, previous, cfg, spec = open_run(spec, cfg, resume, explicit or set())
    try:
        store.check_writable()
    except OutputError as e:
        raise OutputError(f"output not writable: {e}") from e
    seqs, root = list_job_sequences(spec, download or _no_download)
    done = store.completed(cfg.digest()) if previous else set()
    todo = [s for s in seqs if (s.dataset, s.name) not in done]
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    info = dict(previous or {})
    info.update({
        "run_id": run_id, "config": cfg.to_dict(), "config_hash": cfg.digest(), "dataset": spec.dataset,
        "data_root": str(root) if root else spec.data_root, "split": spec.split, "sequences": spec.sequences,
        "inputs": spec.inputs, "sequence_names": [s.name for s in seqs], "workers": spec.workers,
        "gpus": spec.gpus, "address": spec.address, "status": "running",
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
    echo(f"vosbatch: {len(todo)} sequences ({total_frames} frames) of {source}; method={cfg.method} "
         f"flow={cfg.flow} features={cfg.features}; run {store.uri}")
    if previous:
        echo(f"resume: {len(seqs) - len(todo)} of {len(seqs)} sequences already done with config {cfg.digest()}; "
             f"running {len(todo)}")
    bar = tqdm(total=total_frames, unit="frame", disable=not spec.progress, file=sys.stderr, dynamic_ncols=True)
    counts = {"ok": 0, "failed": 0, "retried": 0}

    def on_result(row):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        bar.update(row.get("frames") or 0)
        bar.set_postfix(done=counts["ok"], failed=counts["failed"], retried=counts["retried"], refresh=False)
        if row["status"] != "ok":
            bar.write(f"FAILED {row['sequence']}: {str(row['error']).splitlines()[0]}", file=sys.stderr)

    def on_retry(seq, reason):
        counts["retried"] += 1
        bar.write(f"RETRY {seq.name}: {reason}", file=sys.stderr)

    stats = RunStats()
    t0 = time.time()
    rows = run_sequences(todo, cfg, store.uri, workers=spec.workers, gpus=spec.gpus, address=spec.address,
                         on_result=on_result, flow_cache=spec.flow_cache, cpus_per_worker=spec.cpus_per_worker,
                         retries=spec.retries, runtime_env=spec.runtime_env, on_retry=on_retry, stats=stats,
                         store_options={"endpoint_url": spec.s3_endpoint_url} if spec.s3_endpoint_url else None)
    bar.close()
    elapsed = time.time() - t0
    all_rows = store.read_metrics()  # this session's rows and a resumed run's earlier ones
    info.update(status="done", finished=dt.datetime.now(dt.timezone.utc).isoformat(),
                seconds=info.get("seconds", 0.0) + elapsed if previous else elapsed,
                sequences_ok=sum(r["status"] == "ok" for r in all_rows),
                sequences_failed=sum(r["status"] != "ok" for r in all_rows), retries=stats.retries,
                driver_overhead_s_per_sequence=round(stats.overhead_per_sequence_s, 3),
                actor_startup_s=round(stats.startup_s, 2), processing_s=round(stats.processing_s, 2))
    store.write_run_info(info)
    return {"rows": rows, "all_rows": all_rows, "info": info, "stats": stats, "store": store,
            "skipped": len(seqs) - len(todo), "elapsed": elapsed, "counts": counts}
