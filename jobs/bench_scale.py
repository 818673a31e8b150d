#!/usr/bin/env python
"""Corpus-scale benchmark of the driver and the output layout.

Writes ``--sequences`` tiny synthetic clips (``--frames`` frames of 64x64: a textured square moving over a
textured background) as frame folders, pseudo-labels them with ``vosbatch submit --input`` (the cheapest
configuration: globalopt, DIS medium, no refinement, a 64-px working grid) and reports:

* the driver's peak RSS (VmHWM of the submit process) and its CPU seconds per sequence;
* the driver's overhead per sequence: an actor's wait between finishing one sequence and starting the next;
* the time to resume the finished run (listing what is done; nothing left to run);
* the time to read ``metrics/`` with pyarrow and with DuckDB, before and after ``vosbatch compact``.

    python jobs/bench_scale.py --sequences 2000 --output runs/scale [--workers 2]

Run it inside ../shared/tools/loopback-ns in the development workplace.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

CHEAPEST = ["--preset", "fast", "--refine", "none", "--work-height", "64", "--flow-height", "0",
            "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2"]


def write_clips(folder: Path, n: int, frames: int, size: int = 64) -> None:
    """``n`` folders of ``frames`` JPEGs: a textured square moving right over a background moving left."""
    rng = np.random.default_rng(0)
    for i in range(n):
        clip = folder / f"clip{i:06d}"
        if clip.is_dir() and len(list(clip.iterdir())) == frames:
            continue
        clip.mkdir(parents=True, exist_ok=True)
        bg = rng.integers(0, 255, (size, size * 2, 3), dtype=np.uint8)
        obj = rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8)
        for t in range(frames):
            img = np.ascontiguousarray(bg[:, t:t + size])
            y, x = size // 3, size // 4 + 2 * t
            img[y:y + obj.shape[0], x:x + obj.shape[1]] = obj
            cv2.imwrite(str(clip / f"{t:05d}.jpg"), img)


def _proc_status(pid: int) -> Dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_ticks"] = int(stat[11]) + int(stat[12])
    except (OSError, IndexError, ValueError):
        pass
    return out


def run_measured(cmd: List[str]) -> Dict:
    """Run ``cmd``; its wall time, and the process's own peak RSS and CPU seconds, read until it exits."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    last: Dict[str, int] = {}
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        status = _proc_status(proc.pid)
        if "VmHWM" in status:  # an exited process (a zombie) has no memory figures left
            last = status
        time.sleep(0.2)
    reader.join()
    return {"returncode": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_gb": last.get("VmHWM", 0) / 2**30,
            "cpu_s": last.get("cpu_ticks", 0) / os.sysconf("SC_CLK_TCK"), "output": "".join(lines)}


def read_times(run: Path, compacted: bool) -> Dict[str, float]:
    """Seconds to read every metrics row with pyarrow and with DuckDB (the layout a run has now)."""
    import duckdb
    import pyarrow.dataset as pads

    out = {}
    t0 = time.perf_counter()
    if compacted:
        state = json.loads((run / "compacted" / "CURRENT").read_text())
        rows = pads.dataset([str(run / f) for f in state["metrics"]], format="parquet").to_table().num_rows
        glob = f"{run}/compacted/*/metrics-*.parquet"
    else:
        rows = pads.dataset(str(run / "metrics"), format="parquet", partitioning="hive").to_table().num_rows
        glob = f"{run}/metrics/*/*/*.parquet"
    out["pyarrow_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hive = "" if compacted else ", hive_partitioning = true"
    duck_rows = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{glob}'{hive})").fetchone()[0]
    out["duckdb_s"] = time.perf_counter() - t0
    out["rows"] = rows
    assert rows == duck_rows, (rows, duck_rows)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--output", default="runs/scale")
    args = ap.parse_args(argv)
    out = Path(args.output).resolve()
    clips = out / "clips"
    t0 = time.perf_counter()
    write_clips(clips, args.sequences, args.frames)
    print(f"{args.sequences} clips of {args.frames} frames in {clips} ({time.perf_counter() - t0:.0f} s)", flush=True)
    run_id = f"scale-{args.sequences}"
    submit = [sys.executable, "-m", "vosbatch.cli", "submit", "--input", str(clips), "--output", str(out),
              "--run-id", run_id, "--workers", str(args.workers), "--cpus-per-worker", "1", "--no-progress",
              "--no-compact", *CHEAPEST]
    print("$", " ".join(submit), flush=True)
    first = run_measured(submit)
    if first["returncode"] != 0:
        print(first["output"])
        return 1
    run = out / run_id
    info = json.loads((run / "run.json").read_text())
    resume = run_measured([sys.executable, "-m", "vosbatch.cli", "submit", "--output", str(out), "--resume", run_id,
                           "--no-progress", "--no-compact"])
    before = read_times(run, compacted=False)
    compact = run_measured([sys.executable, "-m", "vosbatch.cli", "compact", str(run)])
    after = read_times(run, compacted=True)
    summary = {
        "sequences": args.sequences, "frames_per_sequence": args.frames, "workers": args.workers,
        "sequences_ok": info.get("sequences_ok"), "submit_wall_s": round(first["wall_s"], 1),
        "driver_peak_rss_gb": round(first["peak_rss_gb"], 3),
        "driver_cpu_ms_per_sequence": round(1000 * first["cpu_s"] / args.sequences, 2),
        "driver_overhead_ms_per_sequence": round(1000 * info.get("driver_overhead_s_per_sequence", 0.0), 2),
        "resume_s": round(resume["wall_s"], 2), "resume_peak_rss_gb": round(resume["peak_rss_gb"], 3),
        "compact_s": round(compact["wall_s"], 2),
        "read_metrics_before": {k: round(v, 3) for k, v in before.items()},
        "read_metrics_after": {k: round(v, 3) for k, v in after.items()},
        "files_before": args.sequences * 2, "files_after": len(list((run / "compacted").rglob("*.parquet"))),
    }
    print(json.dumps(summary, indent=2))
    (run / "bench_scale.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
