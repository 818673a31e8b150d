#!/usr/bin/env python
"""Throughput of a pseudo-labelling job: sequences passed as ``--input`` (no ground truth, so no stage is
scored), segmented by ``vosbatch submit`` on CPU or GPU actors.

Prints, from the run's own records:

* frames/s over the processing span (first sequence started to last finished) and per actor;
* seconds per frame of each stage (worker time);
* device utilisation: the share of the processing span the GPUs were busy (CUDA events around the GPU
  stages), on GPU actors;
* peak host RSS of a worker, and peak GPU memory on GPU actors.

    python jobs/bench_throughput.py --data-root ../shared/data/DAVIS2016 --method globalopt --workers 2
    python jobs/bench_throughput.py --data-root ../shared/data/DAVIS2016 --method ike --gpus 1 -- --flow raft-small

Arguments after ``--`` go to ``vosbatch submit`` as they are (``-- --preset fast``).

``--source DIR`` runs another checkout of vosbatch (``PYTHONPATH=DIR``) with the same command, e.g. the
version before a change, so both are measured in one sitting. It must accept the options used here.
Run it inside ../shared/tools/loopback-ns in the development workplace.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

SEQUENCES = "blackswan,bmx-trees,breakdance,camel,car-roundabout,cows"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, help="a DAVIS root: its frame folders are the inputs")
    ap.add_argument("--sequences", default=SEQUENCES)
    ap.add_argument("--method", default="globalopt")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--output", default="runs/throughput")
    ap.add_argument("--run-id", help="default: <method>-<timestamp>")
    ap.add_argument("--source", help="run this vosbatch checkout instead of the installed one (PYTHONPATH)")
    ap.add_argument("extra", nargs="*", help="further vosbatch submit arguments (after --)")
    args = ap.parse_args(argv)
    run_id = args.run_id or time.strftime(f"{args.method}-%Y%m%d-%H%M%S")
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vosbatch.cli", "submit", "--method", args.method, "--output", str(output),
           "--run-id", run_id, "--no-progress"]
    for name in args.sequences.split(","):
        cmd += ["--input", str(Path(args.data_root).resolve() / "JPEGImages" / "480p" / name)]
    cmd += ["--gpus", str(args.gpus)] if args.gpus else ["--workers", str(args.workers), "--cpus-per-worker",
                                                           str(args.cpus_per_worker)]
    cmd += args.extra
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    if args.source:
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, env=env, cwd=output)  # not this checkout's folder: `-m` would import its package first
    wall = time.time() - t0
    run = output / run_id
    summary = summarise(run, wall, args.gpus or args.workers, bool(args.gpus))
    print(json.dumps(summary, indent=2))
    (run / "throughput.json").write_text(json.dumps(summary, indent=2))
    return rc


def summarise(run: Path, wall: float, actors: int, gpu: bool) -> Dict:
    import pyarrow.dataset as pads

    info = json.loads((run / "run.json").read_text())
    folders = [run / "compacted"] if (run / "compacted").is_dir() else []
    if folders:  # a compacted run (this version) or per-sequence files (any version)
        state = json.loads((run / "compacted" / "CURRENT").read_text())
        rows = pads.dataset([str(run / f) for f in state["metrics"]], format="parquet").to_table().to_pylist()
    else:
        rows = pads.dataset(str(run / "metrics"), format="parquet", partitioning="hive").to_table().to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    frames = sum(r["frames"] for r in ok)
    stages: Dict[str, float] = {}
    for r in ok:
        for k, v in json.loads(r.get("seconds_by_stage") or "{}").items():
            stages[k] = stages.get(k, 0.0) + v
    busy = stages.pop("device_busy", None)
    span = info.get("processing_s") or wall
    out = {
        "run": str(run), "sequences_ok": len(ok), "sequences": len(rows), "frames": frames, "actors": actors,
        "wall_s": round(wall, 1), "processing_s": round(span, 1),
        "frames_per_s": round(frames / span, 3), "frames_per_s_per_actor": round(frames / span / actors, 3),
        "s_per_frame_by_stage": {k: round(v / frames, 4) for k, v in sorted(stages.items())},
        "s_per_frame_worker": round(sum(stages.values()) / frames, 4),
        "peak_rss_gb": round(max(r.get("peak_rss_gb") or 0.0 for r in ok), 2) if ok else None,
    }
    if gpu:
        out["device_busy_share"] = round(busy / (span * actors), 3) if busy is not None else None
        out["peak_gpu_gb"] = round(max(r.get("peak_gpu_gb") or 0.0 for r in ok), 2) if ok else None
    return out


if __name__ == "__main__":
    sys.exit(main())
