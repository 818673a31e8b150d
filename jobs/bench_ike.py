#!/usr/bin/env python
"""IKE per-cycle evaluation on DAVIS 2016 val without Ray (tuning, ablations).

Runs ``--method ike`` sequence by sequence in this process through the pipeline's own predictor
(:meth:`VideoSegmenter.method_output`), with the flow read from / written to a flow cache, and scores every stage (graph1, net1, graph2, ...) with the raw binarisation (no colour
model, no edge-aware filter) and, with ``--both``, also with the pipeline's default binarisation (what
``submit`` writes). Appends one JSON line per sequence to ``--out``.

    OMP_NUM_THREADS=1 python jobs/bench_ike.py --data-root ../shared/data/DAVIS2016 --flow raft-small \\
        --flow-weights ../shared/models/raft-small.pth --flow-cache /tmp/ike/flowcache --sequences dog,libby -p cycles=1

``--refine-from RUN_OR_DIR`` runs the refinement mode on another method's masks, as ``submit
--refine-from`` does, e.g. globalopt's from ``jobs/ablation_davis.py --save-masks``.
``--save-soft DIR`` keeps every stage's soft masks; ``--from-soft DIR`` scores them again without
running the method, e.g. with ``--refine crf`` (``--stages final`` scores only the output). Flow is estimated at ``--flow-height`` (default 480,
DAVIS's own height; 0: at the working height, as before; see the README's IKE section).
"""
from __future__ import annotations

import argparse
import json
import os
import resource

import numpy as np
import torch

from vosbatch.config import FLOW_RELIABILITY, REFINEMENTS, RunConfig, parse_method_params
from vosbatch.data.davis import davis_sequences
from vosbatch.io.priors import load_prior_masks
from vosbatch.methods import MethodOutput
from vosbatch.methods.ike import stage_names
from vosbatch.metrics.davis import evaluate_sequence
from vosbatch.pipeline import VideoSegmenter, binarize_as_configured
from vosbatch.postprocess.binarize import binarize

_INPUT_STEPS = ("resize", "flow", "flow_reliability", "features")  # not the method's own time


def _available_stages(sequence: str, from_soft: str | None, segmenter: VideoSegmenter | None) -> list[str]:
    """The stages a sequence will have: those its saved soft masks hold, or those IKE's configuration makes."""
    if segmenter is None:
        with np.load(os.path.join(from_soft, f"{sequence}.npz")) as z:  # reads the file list only
            return list(z.files)
    return stage_names(segmenter.method_cfg) + ["final"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--sequences", default=None, help="comma-separated (default: the whole val split)")
    ap.add_argument("--flow", default="dis-fine")
    ap.add_argument("--flow-weights", default=None)
    ap.add_argument("--flow-cache", default=None)
    ap.add_argument("--work-height", type=int, default=240)
    ap.add_argument("--flow-height", type=int, default=RunConfig().flow_height, help="estimate flow at this height (0: the working height)")
    ap.add_argument("--flow-reliability", default="none", choices=FLOW_RELIABILITY, help="as submit's --flow-reliability")
    ap.add_argument("-p", action="append", default=[], metavar="KEY=VALUE", help="IkeConfig parameter")
    ap.add_argument("--both", action="store_true", help="also score every stage with the pipeline's binarisation (colour model + the default refinement)")
    ap.add_argument("--refine-from", default=None, metavar="RUN_OR_DIR",
                    help="another method's masks as node features (a vosbatch run or a DAVIS-layout PNG folder)")
    ap.add_argument("--refine", default=RunConfig().refine, choices=REFINEMENTS, help="the pipeline's refinement for --both (as submit's --refine)")
    ap.add_argument("--save-soft", default=None, metavar="DIR", help="keep every stage's soft masks as DIR/SEQUENCE.npz (re-binarise later)")
    ap.add_argument("--from-soft", default=None, metavar="DIR",
                    help="score the soft masks a --save-soft run kept in DIR instead of running the method (another --refine)")
    ap.add_argument("--stages", default=None, help="comma-separated stages to score, e.g. graph1,final (default: all; "
                    "a slow --refine such as crf costs once per stage)")
    ap.add_argument("--out", default=None, help="append per-sequence JSON lines here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = RunConfig(method="ike", flow=args.flow, flow_weights=args.flow_weights, work_height=args.work_height, flow_height=args.flow_height,
                    flow_reliability=args.flow_reliability, refine=args.refine, method_params=parse_method_params(args.p))
    segmenter = None if args.from_soft else VideoSegmenter(cfg, flow_cache=args.flow_cache)  # re-scoring loads no model
    names = args.sequences.split(",") if args.sequences else None
    sequences = list(davis_sequences(args.data_root, "val", names))
    wanted = set(args.stages.split(",")) if args.stages else None
    if wanted is not None:  # before any sequence runs: a typo must not cost a night's benchmark
        for seq in sequences:
            available = _available_stages(seq.name, args.from_soft, segmenter)
            if wanted - set(available):
                ap.error(f"--stages: {seq.name} has no stage {sorted(wanted - set(available))} (it has {available})")
    rows = []
    for seq in sequences:
        frames = seq.load_frames()
        t_len, H, W = frames.shape[:3]
        gt = seq.load_gt((H, W))
        prior = load_prior_masks(args.refine_from, seq.dataset, seq.name, seq.frame_names) if args.refine_from else None
        if args.from_soft:
            with np.load(os.path.join(args.from_soft, f"{seq.name}.npz")) as z:
                stages = {k: z[k] for k in z.files}
            out, seconds = MethodOutput(stages.pop("final"), stages), {}
        else:
            out, seconds = segmenter.method_output(frames, prior)
        if args.save_soft:
            os.makedirs(args.save_soft, exist_ok=True)
            np.savez_compressed(os.path.join(args.save_soft, f"{seq.name}.npz"), final=out.soft, **out.stages)
        method_seconds = {k: v for k, v in seconds.items() if k not in _INPUT_STEPS}
        row = {"sequence": seq.name, "frames": t_len}
        if method_seconds:
            row["seconds_per_frame_method"] = sum(method_seconds.values()) / t_len
        available = dict(out.stages, final=out.soft)
        scored = [(k, v) for k, v in available.items() if wanted is None or k in wanted]
        for colour in ([False, True] if args.both else [False]):
            for name, soft in scored:
                # colour: the pipeline's own binarisation (colour model + refinement); raw: the K-means cut alone
                masks = binarize_as_configured(cfg, frames, soft) if colour else binarize(soft, H, W, refine="none")
                sc = evaluate_sequence(list(masks), gt)
                tag = ("colour_" if colour else "") + name
                row[f"{tag}_J"], row[f"{tag}_F"] = sc.j_mean, sc.f_mean
        row.update({f"seconds_{k}": v / t_len for k, v in method_seconds.items()})
        row.update({k: v for k, v in out.info.items() if k.startswith("power_iterations")})
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
