#!/usr/bin/env python
"""Fit and check the quality estimate (vosbatch.quality) of one method on a run with ground truth.

Reads a finished DAVIS run of the method (its masks' quality signals, its J), computes each frame's J
against the ground truth, fits the frame model (a logistic function of a few signals, least squares on J,
each weight held to the sign its signal was chosen for; a sequence's estimate is the mean of its frames')
and reports, leave-one-sequence-out (every sequence predicted by a model fitted on the others' frames):

* per-sequence Spearman ρ between predicted and true J, and the mean absolute error;
* per-frame Spearman ρ;
* the same for a baseline: the method's stage agreement alone;
* what keeping the sequences with quality >= 0.6 keeps, against the unfiltered mean J.

With ``--pool RUN`` (another method's run on the same videos) that run's frames join the fit, on the signals
both runs have, and leaving a video out leaves it out of both: the signals mean the same whichever method made
the mask, and a run with few failures of its own learns from the other's.
With ``--write`` it saves the model fitted on every sequence (what the package ships). With ``--other RUN``
(the other method's run on the same sequences) it also reports the J of choosing, per sequence, the output
with the higher estimate, against each method alone and the oracle; ``--other-pool`` estimates the other run
with this run's frames pooled, as its own model is fitted.

    python jobs/fit_quality.py --run runs/benchmarks/GO --data-root ../shared/data/DAVIS2016 \\
        --write vosbatch/quality_models/globalopt.json [--other runs/benchmarks/IKE --other-pool]
    python jobs/fit_quality.py --run runs/benchmarks/IKE --data-root ../shared/data/DAVIS2016 \\
        --pool runs/benchmarks/GO --write vosbatch/quality_models/ike.json [--other runs/benchmarks/GO]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from vosbatch.data.davis import davis_sequences
from vosbatch.io.png import decode_mask
from vosbatch.io.store import RunStore
from vosbatch.metrics.davis import jaccard
from vosbatch.quality import LogisticModel, QualityModel

# The model's inputs, chosen before fitting for a stated reason (vosbatch.quality's docstring): agreement of the
# method with itself, in time, and with its refinement; a mask covering the frame's border is usually background;
# a frame that splits badly has no clear object (the method's own spectral cut, where it has one: globalopt).
FRAME_INPUTS = ("stage_iou", "temporal_iou", "refine_iou", "border", "spectral_cut")
BASELINE_INPUTS = ("stage_iou",)
# The direction each input may move the estimate, fixed by the reason it was chosen: correlated inputs fitted on 20
# videos can otherwise trade weights and give one a sign that would reward disagreement.
SIGNS = {"stage_iou": 1, "temporal_iou": 1, "refine_iou": 1, "border": -1, "spectral_cut": -1}
RIDGE = 1e-2  # L2 penalty on the weights: a few inputs, 20 sequences


def fit(x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> LogisticModel:
    """σ(b + w·x) fitted to y in [0, 1] by least squares (a continuous target, which scikit-learn's logistic
    regression does not take), the weights lightly shrunk (inputs standardised) and held to their SIGNS."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    signs = np.array([SIGNS[n] for n in names], np.float64)

    def residuals(p):
        pred = 1.0 / (1.0 + np.exp(-(p[0] + z @ p[1:])))
        return np.concatenate([pred - y, np.sqrt(RIDGE) * p[1:]])

    lower = np.concatenate([[-np.inf], np.where(signs > 0, 0.0, -np.inf)])
    upper = np.concatenate([[np.inf], np.where(signs > 0, np.inf, 0.0)])
    p = least_squares(residuals, np.concatenate([[0.0], 1e-3 * signs]), bounds=(lower, upper)).x
    w = p[1:] / sd
    return LogisticModel(float(p[0] - (w * mu).sum()), {n: float(v) for n, v in zip(names, w)})


def _matrix(rows: List[Dict], names: Sequence[str]) -> np.ndarray:
    return np.array([[r[n] for n in names] for r in rows], np.float64)


def load(run: str, data_root: str) -> Tuple[List[Dict], List[Dict]]:
    """(sequences, frames) of a run: each sequence with its true J, each frame with its signals and, where the
    protocol scores it (not the first or last frame), its true J (else None)."""
    store = RunStore(run)
    metrics = {r["sequence"]: r for r in store.read_metrics() if r["status"] == "ok" and r.get("quality_signals")}
    seqs = {s.name: s for s in davis_sequences(Path(data_root), split="val", sequences=sorted(metrics))}
    sequences, frames = [], []
    for name, row in sorted(metrics.items()):
        table = store.read_masks(sequence=name).to_pylist()
        gt = seqs[name].load_gt((table[0]["height"], table[0]["width"]))
        for i, r in enumerate(table):
            scored = 0 < i < len(table) - 1 and gt[r["frame"]] is not None
            j = jaccard(decode_mask(r["mask_png"]), gt[r["frame"]]) if scored else None
            frames.append({"sequence": name, "j": j, **json.loads(r["quality_signals"])})
        sequences.append({"sequence": name, "j": row["j_mean"]})
    return sequences, frames


def model_inputs(frames: List[Dict], pool: Sequence[Dict] = ()) -> Tuple[str, ...]:
    """FRAME_INPUTS that the run's method computes (a method-specific signal exists only for its method), and
    that the pooled run has too."""
    return tuple(n for n in FRAME_INPUTS if n in frames[0] and (not pool or n in pool[0]))


def _fit_frames(frames: List[Dict], inputs: Sequence[str]) -> LogisticModel:
    scored = [f for f in frames if f["j"] is not None]
    return fit(_matrix(scored, inputs), np.array([f["j"] for f in scored]), inputs)


def loso(sequences: List[Dict], frames: List[Dict], inputs: Sequence[str], pool: Sequence[Dict] = ()) -> Dict:
    """Leave-one-sequence-out predictions (a sequence's: the mean of all its frames', as a run computes it)
    and their scores; ``pool``: another run's frames that join each fit, without the held-out video's."""
    names = [s["sequence"] for s in sequences]
    seq_pred, frame_pred, frame_true = {}, [], []
    for held in names:
        train = [f for f in (*frames, *pool) if f["sequence"] != held]
        model = QualityModel("", _fit_frames(train, inputs))
        test = [f for f in frames if f["sequence"] == held]
        pred = model.frames({n: _matrix(test, [n])[:, 0] for n in inputs})
        seq_pred[held] = model.sequence(pred)
        frame_pred += [p for p, f in zip(pred, test) if f["j"] is not None]
        frame_true += [f["j"] for f in test if f["j"] is not None]
    true = np.array([s["j"] for s in sequences])
    pred = np.array([seq_pred[n] for n in names])
    keep = pred >= 0.6
    return {"sequence_rho": float(spearmanr(pred, true)[0]), "sequence_mae": float(np.abs(pred - true).mean()),
            "frame_rho": float(spearmanr(frame_pred, frame_true)[0]), "frames": len(frame_true),
            "kept_at_0.6": int(keep.sum()), "kept_share": float(keep.mean()),
            "mean_j_kept": float(true[keep].mean()) if keep.any() else None, "mean_j_all": float(true.mean()),
            "predictions": dict(zip(names, pred.round(4).tolist()))}


def describe_run(run: str) -> str:
    """'the <preset> preset at <commit>' (or the run's id without a preset): what a shipped model was fitted on."""
    info = RunStore(run).read_run_info()
    preset = info["config"].get("preset")
    commit = str((info.get("code") or {}).get("git_commit"))[:7]
    return f"{f'the {preset} preset' if preset else 'run ' + str(info.get('run_id'))} at {commit}"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished DAVIS run of the method (local or s3://)")
    ap.add_argument("--data-root", required=True, help="its DAVIS root (ground truth)")
    ap.add_argument("--write", type=Path, help="save the models fitted on every sequence here (JSON)")
    ap.add_argument("--pool", help="another method's run on the same videos whose frames join the fit")
    ap.add_argument("--other", help="the other method's run on the same sequences: the choice experiment")
    ap.add_argument("--other-pool", action="store_true", help="estimate --other with this run's frames pooled")
    args = ap.parse_args(argv)
    method = RunStore(args.run).read_run_info()["config"]["method"]
    sequences, frames = load(args.run, args.data_root)
    scored = [f for f in frames if f["j"] is not None]
    print(f"{method}: {len(sequences)} sequences, {len(scored)} scored frames")
    seq_j = [s["j"] for s in sequences]
    for name in sorted(set(frames[0]) - {"sequence", "j"}):
        seq_mean = [np.mean([f[name] for f in frames if f["sequence"] == s["sequence"]]) for s in sequences]
        print(f"  signal {name:16s} Spearman rho with J: sequences {spearmanr(seq_mean, seq_j)[0]:+.3f}, "
              f"frames {spearmanr([f[name] for f in scored], [f['j'] for f in scored])[0]:+.3f}")
    pool = load(args.pool, args.data_root)[1] if args.pool else []
    inputs = model_inputs(frames, pool)
    report = {"method": method, "run": args.run, "pool": args.pool, "inputs": list(inputs),
              "model": loso(sequences, frames, inputs, pool),
              "baseline_stage_agreement": loso(sequences, frames, BASELINE_INPUTS, pool)}
    for label in ("model", "baseline_stage_agreement"):
        r = report[label]
        print(f"{label:26s} sequence rho {r['sequence_rho']:.3f}  MAE {r['sequence_mae']:.3f}  frame rho "
              f"{r['frame_rho']:.3f}  keep>=0.6: {r['kept_at_0.6']}/{len(sequences)} ({r['kept_share']:.0%}), "
              f"mean J kept {r['mean_j_kept'] if r['mean_j_kept'] is None else round(r['mean_j_kept'], 4)} "
              f"against {r['mean_j_all']:.4f}")
    if args.other:
        other_s, other_f = load(args.other, args.data_root)
        other_pool = frames if args.other_pool else []
        other = loso(other_s, other_f, model_inputs(other_f, other_pool), other_pool)["predictions"]
        mine = report["model"]["predictions"]
        j_mine = {s["sequence"]: s["j"] for s in sequences}
        j_other = {s["sequence"]: s["j"] for s in other_s}
        common = sorted(set(mine) & set(other))
        chosen = [j_mine[n] if mine[n] >= other[n] else j_other[n] for n in common]
        report["choice"] = {"sequences": len(common), "this_method": float(np.mean([j_mine[n] for n in common])),
                            "other_method": float(np.mean([j_other[n] for n in common])),
                            "chosen_by_estimate": float(np.mean(chosen)),
                            "oracle": float(np.mean([max(j_mine[n], j_other[n]) for n in common]))}
        print("choice by estimate:", json.dumps(report["choice"]))
    if args.write:
        source = f"the whole-val run of {describe_run(args.run)}"
        if args.pool:
            source += f", pooled with that of {describe_run(args.pool)}"
        model = QualityModel(method, _fit_frames([*frames, *pool], inputs),
                             f"DAVIS 2016 val, {len(sequences)} sequences, {source}")
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(model.to_json() + "\n")
        print(f"wrote {args.write}")
    print(json.dumps({k: v for k, v in report.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
