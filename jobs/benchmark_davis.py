#!/usr/bin/env python
"""The DAVIS benchmark: a run of ``vosbatch submit`` on a DAVIS split, then its numbers.

Prints (and writes to RUN/benchmark.json) J, F and J&F to four decimals, each intermediate stage's J / F
(IKE's cycles, globalopt's initialisation), seconds per frame by stage, wall time and peak worker RSS.
``--summarise RUN`` prints the same for an existing run without running anything.

    python jobs/benchmark_davis.py --data-root ../shared/data/DAVIS2016 [--preset quality] [--workers 2] [-- submit args]
    python jobs/benchmark_davis.py --summarise runs/benchmarks/davis2016-val-20261206-120000

Run it inside ../shared/tools/loopback-ns in the development workplace (``make benchmark`` does).
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

from vosbatch.io.runs import finite, load_run
from vosbatch.presets import DEFAULT_PRESET, PRESETS


def _mean(values: List[float]) -> Optional[float]:
    values = [v for v in values if finite(v)]
    return sum(values) / len(values) if values else None


def summarise(run_uri: str, wall_s: Optional[float] = None) -> Dict:
    """The benchmark's numbers from a run's metrics (any run with ground truth)."""
    run = load_run(run_uri)
    rows = list(run.rows.values())
    ok = [r for r in rows if r.get("status") == "ok"]
    frames = sum(int(r["frames"]) for r in ok)
    stages: Dict[str, float] = {}
    for r in ok:
        for k, v in json.loads(r.get("seconds_by_stage") or "{}").items():
            stages[k] = stages.get(k, 0.0) + v
    stage_scores: Dict[str, Dict[str, List[float]]] = {}
    for r in ok:
        for stage, sc in json.loads(r.get("stage_scores") or "{}").items():
            for k in ("j_mean", "f_mean"):
                stage_scores.setdefault(stage, {}).setdefault(k, []).append(sc[k])
    j, f = _mean([r.get("j_mean") for r in ok]), _mean([r.get("f_mean") for r in ok])
    return {
        "run": run.uri, "preset": (run.info.get("config") or {}).get("preset"), "sequences_ok": len(ok),
        "sequences_failed": len(rows) - len(ok), "frames": frames,
        "J": j, "F": f, "J&F": (j + f) / 2 if j is not None and f is not None else None,
        "stages": {s: {k: _mean(v) for k, v in sc.items()} for s, sc in sorted(stage_scores.items())},
        "seconds_per_frame_by_stage": {k: v / max(frames, 1) for k, v in sorted(stages.items())},
        "seconds_per_frame_worker": sum(stages.values()) / max(frames, 1),
        "wall_seconds": wall_s, "peak_rss_gb_worker": max((r.get("peak_rss_gb") or 0.0) for r in ok) if ok else None,
    }


def format_summary(s: Dict) -> str:
    def num(v, digits=4):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [f"{s['run']}  (preset {s['preset']})",
             f"{s['sequences_ok']} ok, {s['sequences_failed']} failed, {s['frames']} frames",
             f"J {num(s['J'])}  F {num(s['F'])}  J&F {num(s['J&F'])}"]
    lines += [f"  {stage:8s} J {num(sc.get('j_mean'))}  F {num(sc.get('f_mean'))}" for stage, sc in s["stages"].items()]
    lines.append("s/frame per worker: " + ", ".join(f"{k} {v:.3f}" for k, v in s["seconds_per_frame_by_stage"].items())
                 + f" (total {s['seconds_per_frame_worker']:.3f})")
    if s["wall_seconds"]:
        lines.append(f"wall {s['wall_seconds'] / 60:.1f} min ({s['wall_seconds'] / max(s['frames'], 1):.3f} s/frame)")
    lines.append(f"peak worker RSS {num(s['peak_rss_gb_worker'], 2)} GB")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summarise", metavar="RUN", help="print the numbers of an existing run and stop")
    ap.add_argument("--data-root", help="DAVIS root (JPEGImages/480p/...)")
    ap.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    ap.add_argument("--split", default="val")
    ap.add_argument("--sequences", help="comma-separated (default: the whole split)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--output", default="runs/benchmarks")
    ap.add_argument("--run-id", help="default: davis2016-<split>-<preset>-<timestamp>")
    ap.add_argument("extra", nargs="*", help="further vosbatch submit arguments (after --)")
    args = ap.parse_args(argv)
    if args.summarise:
        print(format_summary(summarise(args.summarise)))
        return 0
    if not args.data_root:
        ap.error("--data-root is needed to run the benchmark (or --summarise RUN)")
    run_id = args.run_id or time.strftime(f"davis2016-{args.split}-{args.preset}-%Y%m%d-%H%M%S")
    cmd = [sys.executable, "-m", "vosbatch.cli", "submit", "--dataset", "davis2016", "--data-root", args.data_root,
           "--split", args.split, "--preset", args.preset, "--output", args.output, "--run-id", run_id,
           "--workers", str(args.workers), "--no-progress", *(["--sequences", args.sequences] if args.sequences else []),
           *args.extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    run_uri = f"{args.output.rstrip('/')}/{run_id}" if "://" in args.output else str(Path(args.output).resolve() / run_id)
    summary = summarise(run_uri, time.time() - t0)
    print(format_summary(summary))
    if "://" not in run_uri:
        Path(run_uri, "benchmark.json").write_text(json.dumps(summary, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
