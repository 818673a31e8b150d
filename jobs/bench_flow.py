"""Benchmark flow backends on DAVIS frames: speed, photometric error, forward-backward consistency.

    python jobs/bench_flow.py --weights ../shared/models/raft-small.pth
    python jobs/bench_flow.py --seqs blackswan,dog --pairs 5 --full-res-pairs 2

For each backend and resolution: seconds per flow field (mean and best over all forward and
backward fields, each computed on its own), mean grey-level error (0..255) between frame t and
frame t+1 warped back with the forward flow (pixels matched inside the image), and the share of
forward vectors passing the forward-backward check of Sundaram et al. The zero-flow column is the
error of not compensating motion at all. The CPU is often shared: the load average is printed so
contended numbers can be spotted, and "best" is the least contended pair.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vosbatch.flow import BidirectionalFlow, create_flow
from vosbatch.flow.reliability import consistency_reliability, photometric_errors

SHARED = Path(__file__).resolve().parents[2] / "shared"
DAVIS = SHARED / "data" / "DAVIS2016" / "JPEGImages" / "480p"


def load_clip(seq: str, n_frames: int, size: tuple[int, int] | None) -> np.ndarray:
    paths = sorted((DAVIS / seq).glob("*.jpg"))[:n_frames]
    if len(paths) < 2:
        raise SystemExit(f"no frames for {seq} under {DAVIS}")
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    if size is not None:
        frames = [cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack(frames)


def evaluate(backend, clips: list[np.ndarray]) -> dict:
    backend.pair_batch(clips[0][:1], clips[0][1:2])  # warm-up (allocations, first-call kernels)
    times, errors, consistent, zero_err = [], [], [], []
    for frames in clips:
        fields = {"forward": [], "backward": []}
        for t in range(len(frames) - 1):  # one pair per call, so every pair is timed on its own
            for direction, (a, b) in (("forward", (t, t + 1)), ("backward", (t + 1, t))):
                start = time.perf_counter()
                fields[direction].append(backend.pair_batch(frames[a : a + 1], frames[b : b + 1])[0])
                times.append(time.perf_counter() - start)
        flow = BidirectionalFlow(np.stack(fields["forward"]), np.stack(fields["backward"]))
        err, _, inside, _ = photometric_errors(frames, flow)
        errors += [e[i].mean() for e, i in zip(err, inside)]
        consistent += list(consistency_reliability(flow).forward.mean(axis=(1, 2)))
        zero = BidirectionalFlow(np.zeros_like(flow.forward), np.zeros_like(flow.backward))
        zero_err += list(photometric_errors(frames, zero)[0].mean(axis=(1, 2)))
    return {"mean": np.mean(times), "best": np.min(times), "photo": np.mean(errors), "fb": np.mean(consistent),
            "zero": np.mean(zero_err)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", default="blackswan,car-roundabout,parkour")
    ap.add_argument("--pairs", type=int, default=10, help="consecutive pairs per sequence")
    ap.add_argument("--full-res-pairs", type=int, default=2, help="pairs per sequence at 480p (0: skip)")
    ap.add_argument("--weights", default=str(SHARED / "models" / "raft-small.pth"))
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    backends = {
        "dis": lambda: create_flow("dis"),
        f"raft-small ({args.iters} it)": lambda: create_flow(
            "raft-small", weights=args.weights, iters=args.iters, device="cpu", batch_size=args.batch_size
        ),
    }
    seqs = args.seqs.split(",")
    settings = [((240, 432), args.pairs)]
    if args.full_res_pairs > 0:
        settings.append((None, args.full_res_pairs))

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"sequences {', '.join(seqs)}")
    header = (f"{'backend':<20} {'size':>8} {'pairs':>5} {'s/pair':>7} {'best':>6} {'photo err':>9} "
              f"{'zero-flow err':>13} {'fb-consistent':>13}")
    print(header)
    print("-" * len(header))
    for size, pairs in settings:
        clips = [load_clip(s, pairs + 1, size) for s in seqs]
        label = f"{clips[0].shape[1]}x{clips[0].shape[2]}"
        for name, make in backends.items():
            r = evaluate(make(), clips)
            print(f"{name:<20} {label:>8} {len(seqs) * pairs:>5} {r['mean']:>7.3f} {r['best']:>6.3f} {r['photo']:>9.2f} "
                  f"{r['zero']:>13.2f} {100 * r['fb']:>12.1f}%", flush=True)
    print(f"load avg at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
