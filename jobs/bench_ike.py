#!/usr/bin/env python
"""IKE per-cycle evaluation on DAVIS 2016 val without Ray (tuning, ablations).

Runs ``--method ike`` sequence by sequence in this process, with the flow read from / written to a
flow cache, and scores every stage (graph1, net1, graph2, ...) with the raw binarisation (no colour
model, no guided filter) and, with ``--both``, also the pipeline's default binarisation for the
first graph stage and the final masks. Appends one JSON line per sequence to ``--out``.

    OMP_NUM_THREADS=1 python jobs/bench_ike.py --data-root ../shared/data/DAVIS2016 --flow raft-small \\
        --flow-weights ../shared/models/raft-small.pth --flow-cache /tmp/ike/flowcache --sequences dog,libby -p cycles=1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import cv2
import numpy as np
import torch

from vosbatch.config import parse_method_params
from vosbatch.data.davis import davis_sequences
from vosbatch.flow import create_flow
from vosbatch.flow.cache import cached_flow
from vosbatch.methods import MethodInput, get_method
from vosbatch.metrics.davis import evaluate_sequence
from vosbatch.pipeline import working_size
from vosbatch.postprocess.binarize import binarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--sequences", default=None, help="comma-separated (default: the whole val split)")
    ap.add_argument("--flow", default="dis")
    ap.add_argument("--flow-weights", default=None)
    ap.add_argument("--flow-cache", default=None)
    ap.add_argument("--work-height", type=int, default=240)
    ap.add_argument("-p", action="append", default=[], metavar="KEY=VALUE", help="IkeConfig parameter")
    ap.add_argument("--both", action="store_true", help="also score with the colour model + guided filter")
    ap.add_argument("--out", default=None, help="append per-sequence JSON lines here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    fn, cls = get_method("ike")
    cfg = cls(**parse_method_params(args.p))
    kwargs = {}
    if args.flow.startswith("raft"):
        kwargs = {"weights": args.flow_weights, "device": "cpu", "iters": 12}
    backend = create_flow(args.flow, **kwargs)
    names = args.sequences.split(",") if args.sequences else None
    rows = []
    for seq in davis_sequences(args.data_root, "val", names):
        frames = seq.load_frames()
        t_len, H, W = frames.shape[:3]
        gt = seq.load_gt((H, W))
        h, w = working_size(H, W, args.work_height)
        small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
        flow = cached_flow(backend, small, args.flow_cache)
        t0 = time.perf_counter()
        out = fn(MethodInput(small, flow), cfg)
        row = {"sequence": seq.name, "frames": t_len, "seconds_per_frame_method": (time.perf_counter() - t0) / t_len}
        for colour in ([False, True] if args.both else [False]):
            for name, soft in list(out.stages.items()) + [("final", out.soft)]:
                if colour and name not in ("graph1", "final"):
                    continue
                masks = binarize(soft, H, W, guide=frames if colour else None, colour_weight=2.0 if colour else 0.0,
                                 refine="guided" if colour else "none")
                sc = evaluate_sequence(list(masks), gt)
                tag = ("colour_" if colour else "") + name
                row[f"{tag}_J"], row[f"{tag}_F"] = sc.j_mean, sc.f_mean
        row.update({k: v / t_len for k, v in out.info.items() if k.startswith("seconds_")})
        row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    keys = [k for k in rows[0] if k != "sequence"]
    print("MEAN", json.dumps({k: float(np.mean([r[k] for r in rows])) for k in keys}, indent=1))


if __name__ == "__main__":
    main()
