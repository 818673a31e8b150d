"""Time a (randomly initialised) ViT-S/16 DINO feature backend end to end through the pipeline.

    python jobs/bench_vit.py [--seq blackswan] [--frames 20] [--features dino-vits16]

Runs ``VideoSegmenter(RunConfig(features=...))`` on the first frames of one DAVIS 2016 sequence at
480p and prints seconds per frame by stage. No weights are loaded (none can be downloaded here), so
the masks are not meaningful; the timing is: a random ViT costs the same as a trained one. The
first call (allocations, first-call kernels) is a warm-up on two frames and not counted.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import torch

from vosbatch.config import RunConfig
from vosbatch.pipeline import VideoSegmenter

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "DAVIS2016" / "JPEGImages" / "480p"


def load_clip(seq: str, n_frames: int) -> np.ndarray:
    paths = sorted((DAVIS / seq).glob("*.jpg"))[:n_frames]
    if len(paths) < 2:
        raise SystemExit(f"no frames for {seq} under {DAVIS}")
    return np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="blackswan")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--features", default="dino-vits16")
    ap.add_argument("--flow", default="dis-fine")
    args = ap.parse_args()

    frames = load_clip(args.seq, args.frames)
    seg = VideoSegmenter(RunConfig(features=args.features, flow=args.flow))
    feat = seg.features
    grid = seg._feature_grid((seg.cfg.work_height, int(round(frames.shape[2] * seg.cfg.work_height / frames.shape[1]))))
    print(f"{args.seq}: {len(frames)} frames {frames.shape[1]}x{frames.shape[2]}, features={args.features} "
          f"({getattr(feat, 'model_name', '?')}, device {getattr(feat, 'device', '?')}, random init), "
          f"feature grid {grid}, ViT input {feat.input_size(frames.shape[1:3], grid) if hasattr(feat, 'input_size') else '?'}, "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    seg.segment(frames[:2], keep_stages=False)  # warm-up
    t0 = time.perf_counter()
    res = seg.segment(frames, keep_stages=False)
    total = time.perf_counter() - t0
    n = len(frames)
    for stage, s in res.seconds.items():
        print(f"  {stage:>18s}: {s / n:8.4f} s/frame")
    print(f"  {'total':>18s}: {total / n:8.4f} s/frame ({total:.2f} s, load {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
