#!/usr/bin/env python
"""Scaling benchmark of the batch runner (issue 6's numbers).

1. Throughput: the same DAVIS sequences with 1 and then 2 CPU actors of ``--cpus-per-worker`` CPUs
   each (same run configuration); prints frames/s of both over the processing span (first sequence
   start to last finish) and over the whole wall time (with Ray's and the actors' start-up), the
   speed-ups, and the driver's overhead per sequence (an actor's wait between two sequences).
2. Memory vs length: one synthetic 480p video of ``--short`` and one of ``--long`` frames (a
   textured object moving over a panning background, written as MP4), each segmented through
   ``--input``; prints the worker's peak RSS for both. Long videos run in overlapping windows, so the
   two should match.

    python jobs/bench_scaling.py --data-root ../shared/data/DAVIS2016 [--skip-throughput] [--skip-memory]

Inside this workplace run it under ../shared/tools/loopback-ns.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SEQUENCES = "blackswan,bmx-trees,breakdance,camel,car-roundabout,cows"


def submit(*args: str) -> float:
    cmd = [sys.executable, "-m", "vosbatch.cli", "submit", "--no-progress", *args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_WAIT_POLICY="PASSIVE"))
    return time.time() - t0


def metrics(run: Path) -> list:
    from vosbatch.io.store import RunStore

    return RunStore(str(run)).read_metrics()


def throughput(args) -> dict:
    out = {}
    for workers in (1, 2):
        run_id = f"scaling-{workers}w-{time.strftime('%H%M%S')}"
        submit("--data-root", args.data_root, "--sequences", args.sequences, "--output", args.output, "--run-id", run_id,
               "--workers", str(workers), "--cpus-per-worker", str(args.cpus_per_worker))
        run = Path(args.output).resolve() / run_id
        info = json.loads((run / "run.json").read_text())
        frames = sum(r["frames"] for r in metrics(run) if r["status"] == "ok")
        out[workers] = {"run": str(run), "frames": frames, "seconds": info["seconds"],
                        "frames_per_s": frames / info["seconds"], "processing_s": info["processing_s"],
                        "frames_per_s_processing": frames / info["processing_s"],
                        "actor_startup_s": info["actor_startup_s"],
                        "driver_overhead_s_per_sequence": info["driver_overhead_s_per_sequence"]}
        print(json.dumps(out[workers]), flush=True)
    out["speedup_wall"] = out[2]["frames_per_s"] / out[1]["frames_per_s"]  # incl. Ray and actor start-up
    out["speedup"] = out[2]["frames_per_s_processing"] / out[1]["frames_per_s_processing"]
    return out


def write_long_video(path: Path, n: int, size=(480, 854), fps: int = 25, seed: int = 0) -> None:
    """A textured ellipse circling over a panning textured background, rendered and encoded frame by
    frame (the script itself never holds the video)."""
    import av
    import numpy as np

    from vosbatch.testing.synthetic import _shift, texture

    rng = np.random.default_rng(seed)
    h, w = size
    bg, fg = texture(h, w, rng, 6.0, (0.6, 0.9, 0.7)), texture(h, w, rng, 2.0, (1.0, 0.6, 0.5))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(n):
            phase = 2 * np.pi * t / 200
            oy, ox = h * (0.5 + 0.2 * np.sin(phase)), w * (0.5 + 0.3 * np.cos(phase))
            inside = ((ys - oy) / (h * 0.15)) ** 2 + ((xs - ox) / (w * 0.1)) ** 2 <= 1.0
            bgt = _shift(bg, 20 * np.sin(phase / 2), 5 * np.cos(phase / 3))
            fgt = _shift(fg, ox - w / 2, oy - h / 2)
            img = np.clip(np.where(inside[..., None], fgt, bgt), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def memory(args) -> dict:
    folder = Path(args.output).resolve() / "scaling-videos"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for n in (args.short, args.long):
        path = folder / f"synthetic-{n}.mp4"
        if not path.exists():
            write_long_video(path, n)
        run_id = f"memory-{n}-{time.strftime('%H%M%S')}"
        secs = submit("--input", str(path), "--output", args.output, "--run-id", run_id, "--workers", "1")
        row = metrics(Path(args.output).resolve() / run_id)[0]
        out[n] = {"frames": row["frames"], "status": row["status"], "windows": row.get("windows"),
                  "peak_rss_gb": row.get("peak_rss_gb"), "window_overlap_iou": row.get("window_overlap_iou"),
                  "seconds": secs, "error": row.get("error")}
        print(json.dumps({n: out[n]}), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data/DAVIS2016")
    ap.add_argument("--sequences", default=SEQUENCES)
    ap.add_argument("--output", default="runs/scaling")
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--short", type=int, default=100)
    ap.add_argument("--long", type=int, default=1200)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    result = {}
    if not args.skip_throughput:
        result["throughput"] = throughput(args)
    if not args.skip_memory:
        result["memory"] = memory(args)
    print(json.dumps(result, indent=2))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
