#!/usr/bin/env python
"""Paper-style ablation of the global optimisation on DAVIS 2016 val, as one table.

Rows: flow backend × feature backend × appearance model (the colour model alone, or the per-video
appearance net before it) × refinement (none / guided filter / fast global smoother / smoother +
dense CRF). Columns: the initialisation's J, J after the optimisation (Eq. 1), F, J&F, the
optimisation's gain and the method's seconds per frame. Each (flow, features) pair runs the method
**once** per sequence; its soft masks (initialisation and optimised) are saved, and every refinement
is applied to both from those files, so "init vs + optimisation" and "with vs without CRF" come
from the same masks.
Flows are cached (``--flow-cache``) and reused across configurations and reruns; a rerun with the
same ``--run-id`` reuses the saved soft masks.

    python jobs/ablation_davis.py --data-root ../shared/data/DAVIS2016 --output runs/ablation

Writes ``OUTPUT/RUN_ID/ablation.{parquet,csv}`` (the table) and ``per_sequence.{parquet,csv}``, and
prints the table. No Ray: one process, sequences in turn (DAVIS val is ~1,400 frames).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall contended CPUs

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from vosbatch.config import RunConfig, parse_method_params  # noqa: E402
from vosbatch.data import davis_sequences  # noqa: E402
from vosbatch.features.vit import VIT_MODELS  # noqa: E402
from vosbatch.io.png import write_davis_png  # noqa: E402
from vosbatch.metrics import evaluate_sequence  # noqa: E402
from vosbatch.pipeline import VideoSegmenter, appearance_net_settings  # noqa: E402
from vosbatch.postprocess.binarize import refine_and_threshold, soft_at_full_size  # noqa: E402
from vosbatch.postprocess.crf import CRFParams, crf_available, crf_params  # noqa: E402

DEFAULT_RAFT_SMALL = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "raft-small.pth"


def soft_masks(segmenter: VideoSegmenter, frames: np.ndarray) -> Dict[str, object]:
    """The method's soft masks (final and "init") for one video, with per-stage seconds; the
    ablation binarises them itself, once per refinement."""
    out, seconds = segmenter.method_output(frames)
    return {"soft": out.soft, "init": out.stages["init"], "seconds_flow": seconds.get("flow", 0.0),
            "seconds_features": seconds.get("features", 0.0), "seconds_init": seconds.get("init", 0.0),
            "seconds_optimise": seconds.get("optimise", 0.0)}


APPEARANCE = ("colour", "net")  # --appearance choices: the colour model alone, or the appearance net before it


def run_configuration(cfg: RunConfig, sequences, refinements: List[str], run_dir: Path, flow_cache: Optional[str],
                      crf_params: Optional[CRFParams] = None, appearances: List[str] = ("colour",),
                      save_masks: bool = False) -> List[Dict]:
    """Per-sequence rows for one (flow, features) pair and every appearance model and refinement.
    ``save_masks``: also write each row's optimised binary masks as DAVIS-layout PNGs (see
    :func:`masks_dir`), e.g. as ``--refine-from`` input for another method."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    segmenter = VideoSegmenter(cfg, flow_cache)
    soft_dir = run_dir / "soft" / f"flow={cfg.flow}" / f"features={cfg.features}" / cfg.method_digest()
    soft_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seq in sequences:
        frames = seq.load_frames()
        gt = seq.load_gt(frames.shape[1:3])
        path = soft_dir / f"{seq.name}.npz"
        if path.is_file():  # resumed: the method's output for this exact configuration exists
            with np.load(path) as z:
                res = {k: z[k] for k in z.files}
                res = {k: (float(v) if v.ndim == 0 else v) for k, v in res.items()}
        else:
            res = soft_masks(segmenter, frames)
            np.savez(path, **res)
        n = len(frames)
        for appearance in appearances:
            rows += _binarised_rows(cfg, seq, frames, gt, res, refinements, crf_params, appearance,
                                    run_dir if save_masks else None)
    return rows


def masks_dir(run_dir: Path, cfg: RunConfig, appearance: str, refine: str) -> Path:
    """``RUN_DIR/masks/<flow>-<features>-<appearance>-<refine>``: one DAVIS-layout folder per table row."""
    return run_dir / "masks" / f"{cfg.flow}-{cfg.features}-{appearance}-{refine}"


def _binarised_rows(cfg: RunConfig, seq, frames: np.ndarray, gt, res: Dict, refinements: List[str],
                    crf_params: Optional[CRFParams], appearance: str, save_under: Optional[Path] = None) -> List[Dict]:
    """One sequence's rows for one appearance model: init and optimised masks through each refinement
    (the optimised ones written as PNGs under ``save_under``'s :func:`masks_dir` when given)."""
    n, name = len(frames), seq.name
    net = appearance_net_settings(dataclasses.replace(cfg, appearance_net=appearance == "net"))
    t0 = time.perf_counter()
    full = {stage: soft_at_full_size(res[stage], frames.shape[1], frames.shape[2], frames, cfg.appearance_weight, net, cfg.seed)
            for stage in ("init", "soft")}  # shared by every refinement
    t_shared = (time.perf_counter() - t0) / (2 * n)
    rows = []
    for refine in refinements:
        scores = {}
        t_refine = 0.0
        for stage in ("init", "soft"):
            t0 = time.perf_counter()
            masks = refine_and_threshold(full[stage], frames, refine, seed=cfg.seed, crf_params=crf_params)
            t_refine += time.perf_counter() - t0
            s = evaluate_sequence(list(masks), gt)
            scores[stage] = (float(s.j_mean), float(s.f_mean))
            if stage == "soft" and save_under is not None:
                folder = masks_dir(save_under, cfg, appearance, refine) / name
                for frame_name, mask in zip(seq.frame_names, masks):
                    write_davis_png(mask, folder / f"{frame_name}.png")
        r = {
            "flow": cfg.flow, "features": cfg.features, "appearance": appearance, "refine": refine, "sequence": name,
            "frames": n, "init_j": scores["init"][0], "init_f": scores["init"][1], "j": scores["soft"][0], "f": scores["soft"][1],
            "s_init": res["seconds_init"] / n, "s_optimise": res["seconds_optimise"] / n,
            "s_flow": res["seconds_flow"] / n, "s_features": res["seconds_features"] / n,
            # binarisation of one stage: appearance net + upsampling + colour model (shared) + this refinement + threshold
            "s_binarize": t_shared + t_refine / (2 * n),
        }
        rows.append(r)
        print(f"  {cfg.flow:10s} {cfg.features:8s} {appearance:6s} {refine:6s} {name:20s} init J {r['init_j']:.3f} "
              f"J {r['j']:.3f} F {r['f']:.3f}", flush=True)
    return rows


def summarise_rows(rows: List[Dict]) -> List[Dict]:
    keys = []
    for r in rows:
        k = (r["flow"], r["features"], r["appearance"], r["refine"])
        if k not in keys:
            keys.append(k)
    table = []
    for k in keys:
        group = [r for r in rows if (r["flow"], r["features"], r["appearance"], r["refine"]) == k]
        frames = sum(r["frames"] for r in group)
        mean = lambda c: float(np.mean([r[c] for r in group]))  # noqa: E731  (DAVIS: mean over sequences)
        per_frame = lambda c: float(sum(r[c] * r["frames"] for r in group) / frames)  # noqa: E731
        table.append({
            "flow": k[0], "features": k[1], "appearance": k[2], "refine": k[3], "sequences": len(group), "frames": frames,
            "init_J": mean("init_j"), "J": mean("j"), "F": mean("f"), "JF": (mean("j") + mean("f")) / 2,
            "init_F": mean("init_f"), "delta_opt_J": mean("j") - mean("init_j"),
            "s_per_frame_init_opt": per_frame("s_init") + per_frame("s_optimise"),
            "s_per_frame_flow": per_frame("s_flow"), "s_per_frame_binarize": per_frame("s_binarize"),
            "s_per_frame_init": per_frame("s_init"), "s_per_frame_optimise": per_frame("s_optimise"),
        })
    return table


def format_table(table: List[Dict]) -> str:
    head = f"{'flow':11s} {'features':9s} {'appear.':7s} {'refine':7s} {'init J':>7s} {'+opt J':>7s} {'F':>7s} {'J&F':>7s} {'init F':>7s} {'Δopt J':>7s} {'s/frame':>8s} {'binarise s/f':>12s}"
    lines = [head, "-" * len(head)]
    for r in table:
        lines.append(f"{r['flow']:11s} {r['features']:9s} {r['appearance']:7s} {r['refine']:7s} {r['init_J']:7.3f} {r['J']:7.3f} {r['F']:7.3f} {r['JF']:7.3f} "
                     f"{r['init_F']:7.3f} {r['delta_opt_J']:+7.3f} {r['s_per_frame_init_opt']:8.3f} {r['s_per_frame_binarize']:12.3f}")
    return "\n".join(lines)


def write(rows: List[Dict], stem: Path) -> None:
    t = pa.Table.from_pylist(rows)
    pq.write_table(t, str(stem) + ".parquet")
    pacsv.write_csv(t, str(stem) + ".csv")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--output", default="runs/ablation")
    ap.add_argument("--run-id", default="davis2016-val")
    ap.add_argument("--sequences", default=None, help="comma-separated (default: the whole val split)")
    ap.add_argument("--flows", default="dis,raft-small")
    ap.add_argument("--raft-small-weights", default=str(DEFAULT_RAFT_SMALL))
    ap.add_argument("--features", default="colour", help="comma-separated feature backends")
    ap.add_argument("--feature-weights", action="append", default=[], metavar="BACKEND=PTH",
                    help="checkpoint of a ViT feature backend (no pretrained ViT weights ship with this project)")
    ap.add_argument("--refinements", default="none,guided,fgs,crf")
    ap.add_argument("--appearance", default="colour",
                    help="appearance models, comma-separated: colour (the colour model alone), net (the appearance net, "
                         "then the colour model; ~0.4 s/frame more per stage on 2 CPU cores)")
    ap.add_argument("--flow-height", type=int, default=RunConfig().flow_height, help="estimate flow at this height (0: the working height)")
    ap.add_argument("--flow-cache", default=None, help="flow cache folder (default OUTPUT/flowcache)")
    ap.add_argument("--crf-max-height", type=int, default=CRFParams().max_height,
                    help="run the dense CRF at most at this height (marginals upsampled; 0: full size)")
    ap.add_argument("--crf-param", action="append", default=[], metavar="KEY=VALUE",
                    help="dense CRF parameter (vosbatch/postprocess/crf.py CRFParams), e.g. appearance_xy_std=67 (DeepLab's)")
    ap.add_argument("--save-masks", action="store_true",
                    help="write each row's optimised binary masks as DAVIS-layout PNGs under RUN_DIR/masks/"
                         "<flow>-<features>-<appearance>-<refine>/ (e.g. for --refine-from)")
    ap.add_argument("--jobs", type=int, default=1, help="configurations run in parallel processes")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter")
    args = ap.parse_args()

    run_dir = Path(args.output) / args.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    flow_cache = args.flow_cache or str(Path(args.output) / "flowcache")
    sequences = davis_sequences(args.data_root, split="val", sequences=args.sequences.split(",") if args.sequences else None)
    notes = []
    refinements = args.refinements.split(",")
    appearances = args.appearance.split(",")
    if set(appearances) - set(APPEARANCE):
        ap.error(f"--appearance: choose from {', '.join(APPEARANCE)}")
    if "crf" in refinements and not crf_available():
        refinements.remove("crf")
        notes.append("crf rows skipped: the 'crf' extra (pydensecrf2) is not installed: pip install 'vosbatch[crf]'")
    feature_weights = dict(item.split("=", 1) for item in args.feature_weights)
    configs = []
    for flow in args.flows.split(","):
        flow_weights = None
        if flow == "raft-small":
            if not Path(args.raft_small_weights).is_file():
                notes.append(f"raft-small rows skipped: no checkpoint at {args.raft_small_weights}")
                continue
            flow_weights = args.raft_small_weights
        for features in args.features.split(","):
            if features in VIT_MODELS and features not in feature_weights:
                notes.append(f"{features} rows skipped: no pretrained ViT weights exist here (random weights are "
                             f"meaningless as appearance); pass --feature-weights {features}=PTH to add them")
                continue
            configs.append(RunConfig(flow=flow, flow_weights=flow_weights, flow_height=args.flow_height, features=features,
                                     feature_weights=feature_weights.get(features), method_params=parse_method_params(args.param)))
    if not any(f in VIT_MODELS for f in args.features.split(",")):
        notes.append("feature backend: colour only (offline): no pretrained ViT (DINO) weights exist here, "
                     "so the paper's DINO rows cannot be reproduced; add them with --features dino-vits16 --feature-weights dino-vits16=PTH")
    for n in notes:
        print("note:", n, flush=True)
    rows: List[Dict] = []
    t0 = time.time()
    try:
        crf = crf_params(**{"max_height": args.crf_max_height or None, **parse_method_params(args.crf_param)})
    except ValueError as exc:
        ap.error(str(exc))
    for cfg in configs:
        print(f"== flow {cfg.flow}, features {cfg.features}, refinements {','.join(refinements)}", flush=True)
    if args.jobs > 1 and len(configs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_configuration, cfg, sequences, refinements, run_dir, flow_cache, crf, appearances, args.save_masks) for cfg in configs]
            for fut in futures:
                rows += fut.result()
    else:
        for cfg in configs:
            rows += run_configuration(cfg, sequences, refinements, run_dir, flow_cache, crf, appearances, args.save_masks)
            write(rows, run_dir / "per_sequence")
    write(rows, run_dir / "per_sequence")
    table = summarise_rows(rows)
    write(table, run_dir / "ablation")
    meta = {"notes": notes, "method_params": parse_method_params(args.param), "crf_params": dataclasses.asdict(crf), "seconds": time.time() - t0,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "sequences": [s.name for s in sequences]}
    (run_dir / "ablation.json").write_text(json.dumps(meta, indent=2))
    print()
    print(f"DAVIS 2016 val, {len(sequences)} sequences (J, F: means over sequences; s/frame: init + optimisation)")
    print(format_table(table))
    for n in notes:
        print("note:", n)
    print(f"table: {run_dir / 'ablation.parquet'} (.csv); per sequence: {run_dir / 'per_sequence.parquet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
