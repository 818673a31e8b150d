#!/usr/bin/env python
"""Nightly benchmark: the whole DAVIS 2016 val set through ``vosbatch submit``, then a summary.

Writes the usual run (masks/, metrics/, run.json) and prints J&F, the optimisation's gain over
the initialisation, seconds per frame by stage and the peak RSS of the worker processes.

    python jobs/benchmark_davis.py --data-root ../shared/data/DAVIS2016 [--flow dis] [-- extra submit args]

Inside this workplace run it under ../shared/tools/loopback-ns (``make benchmark`` does).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--output", default="runs/benchmarks")
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sequences", default=None)
    ap.add_argument("extra", nargs="*", help="further arguments for vosbatch submit (after --)")
    args = ap.parse_args()
    run_id = args.run_id or time.strftime("davis2016-val-%Y%m%d-%H%M%S")
    cmd = [sys.executable, "-m", "vosbatch.cli", "submit", "--dataset", "davis2016", "--data-root", args.data_root,
           "--split", "val", "--output", args.output, "--run-id", run_id, "--workers", str(args.workers), *args.extra]
    if args.sequences:
        cmd += ["--sequences", args.sequences]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    wall = time.time() - t0
    # Ray workers are children of the raylet, not of us: their peak RSS is what RUSAGE_CHILDREN
    # sees only partly, so each worker also reports it (see below) when available.
    peak_children_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    from vosbatch.io.store import RunStore
    from vosbatch.metrics import summarise

    run_uri = str(Path(args.output).resolve() / run_id)
    rows = RunStore(run_uri).read_metrics()
    ok = [r for r in rows if r["status"] == "ok"]
    frames = sum(r["frames"] for r in ok)
    stages: dict = {}
    for r in ok:
        for k, v in json.loads(r["seconds_by_stage"] or "{}").items():
            stages[k] = stages.get(k, 0.0) + v
    s = summarise(ok) if ok else {}
    init_j = sum(r["init_j_mean"] for r in ok if r.get("init_j_mean") is not None) / max(1, len(ok))
    init_f = sum(r["init_f_mean"] for r in ok if r.get("init_f_mean") is not None) / max(1, len(ok))
    peak_rss = max((r.get("peak_rss_gb") or 0.0) for r in ok) if ok else 0.0
    summary = {
        "run": run_uri, "sequences_ok": len(ok), "sequences_failed": len(rows) - len(ok), "frames": frames,
        "J": s.get("j_mean"), "F": s.get("f_mean"), "J&F": s.get("jf_mean"),
        "init_J": init_j, "init_F": init_f, "optimisation_gain_J": (s.get("j_mean") or 0) - init_j,
        "wall_seconds": wall, "seconds_per_frame_wall": wall / max(frames, 1),
        "seconds_per_frame_by_stage": {k: v / max(frames, 1) for k, v in sorted(stages.items())},
        "seconds_per_frame_processing": sum(stages.values()) / max(frames, 1),
        "peak_rss_gb_worker": peak_rss, "peak_rss_gb_children": peak_children_gb,
    }
    print(json.dumps(summary, indent=2))
    Path(run_uri, "benchmark.json").write_text(json.dumps(summary, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
