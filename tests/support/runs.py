"""A real (small) run folder without Ray: what report and tooling tests read.

Each sequence goes through the same worker function the Ray actors call, so the files are exactly
those of ``vosbatch submit``; only the scheduling is missing.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterable, Optional

from vosbatch.config import RunConfig
from vosbatch.data import davis_sequences
from vosbatch.io.store import RunStore
from vosbatch.pipeline import VideoSegmenter
from vosbatch.runinfo import code_version
from vosbatch.runner.worker import process_sequence

SMALL_CONFIG = dict(work_height=96, method_params={"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}})


def make_run(data_root: Path, run_dir: Path, cfg: Optional[RunConfig] = None,
             sequences: Optional[Iterable[str]] = None, dataset: str = "davis2016") -> list:
    """Segment ``sequences`` of a DAVIS-layout root into ``run_dir``; returns the metrics rows."""
    cfg = cfg or RunConfig(**SMALL_CONFIG)
    seqs = davis_sequences(Path(data_root), split="val", sequences=list(sequences) if sequences else None, dataset=dataset)
    store = RunStore(str(run_dir))
    run_dir = Path(run_dir)
    info = {
        "run_id": run_dir.name, "config": cfg.to_dict(), "config_hash": cfg.digest(), "dataset": dataset,
        "data_root": str(data_root), "split": "val", "sequences": [s.name for s in seqs], "workers": 1, "gpus": 0,
        "address": None, "code": code_version(), "host": {"hostname": "test"},
        "started": dt.datetime.now(dt.timezone.utc).isoformat(), "status": "running",
    }
    store.write_run_info(info)
    segmenter = VideoSegmenter(cfg)
    rows = [process_sequence(segmenter, s, store) for s in seqs]
    ok = sum(r["status"] == "ok" for r in rows)
    info.update(status="done", finished=dt.datetime.now(dt.timezone.utc).isoformat(), sequences_ok=ok,
                sequences_failed=len(rows) - ok)
    store.write_run_info(info)
    return rows
