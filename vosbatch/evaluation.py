"""Scoring PNG folders and exporting runs: the glue behind ``vosbatch eval`` and ``export``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import InputError, VosbatchError
from .io.png import decode_mask, read_png_folder, write_davis_png
from .io.store import METRIC_FIELDS, RunStore
from .metrics import METRIC_COLUMNS, evaluate_sequence


def gt_folder(gt_root: Path, sequence: str) -> Path:
    """GT of a sequence in a DAVIS root (Annotations/480p/<seq>) or a plain GT/<seq> folder."""
    davis = Path(gt_root) / "Annotations" / "480p" / sequence
    return davis if davis.is_dir() else Path(gt_root) / sequence


def evaluate_folder(pred_dir: Path, gt_dir: Path, sequence: str) -> Dict:
    """Score one sequence: every GT frame must have a prediction of the same size."""
    preds = read_png_folder(pred_dir)
    gts = read_png_folder(gt_dir)
    if not gts:
        raise InputError(f"{gt_dir}: no ground-truth PNGs")
    missing = [n for n in gts if n not in preds]
    if missing:
        raise InputError(f"{pred_dir / (missing[0] + '.png')}: missing prediction ({len(missing)} of {len(gts)} frames missing)")
    names = sorted(gts)
    for n in names:
        if preds[n].shape != gts[n].shape:
            raise InputError(f"{pred_dir / (n + '.png')}: size {preds[n].shape[::-1]} differs from GT {gts[n].shape[::-1]}")
    scores = evaluate_sequence([preds[n] for n in names], [gts[n] for n in names])
    row = {"sequence": sequence, "frames": len(names), "status": "ok", "error": None}
    row.update({k: float(getattr(scores, k)) for k in METRIC_COLUMNS})
    return row


def evaluate_folders(pred_root: Path, gt_root: Path, sequences: Optional[List[str]] = None) -> List[Dict]:
    pred_root = Path(pred_root)
    names = sequences or sorted(p.name for p in pred_root.iterdir() if p.is_dir())
    if not names:
        raise InputError(f"{pred_root}: no sequence folders with PNG masks")
    rows = []
    for name in names:
        try:
            rows.append(evaluate_folder(pred_root / name, gt_folder(gt_root, name), name))
        except VosbatchError as e:
            rows.append({"sequence": name, "status": "failed", "error": str(e)})
    return rows


def write_rows(rows: List[Dict], out: Path) -> None:
    """Per-sequence rows with the same metric columns (and types) as a run's ``metrics/``."""
    types = dict(METRIC_FIELDS)
    cols = ["sequence", "frames", *METRIC_COLUMNS, "status", "error"]
    schema = pa.schema([("sequence", pa.string())] + [(c, types[c]) for c in cols[1:]])
    table = pa.table({c: [r.get(c) for r in rows] for c in cols}, schema=schema)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".parquet":
        pq.write_table(table, tmp)
    elif out.suffix == ".csv":
        pacsv.write_csv(table, tmp)
    else:
        raise InputError(f"{out}: --out must end in .csv or .parquet")
    tmp.replace(out)


def export_pngs(run_uri: str, png_dir: Path, min_quality: Optional[float] = None,
                min_frame_quality: Optional[float] = None) -> int:
    """Write a run's masks as PNG/<sequence>/<frame_name>.png (PNG/<dataset>/<sequence>/ if several datasets),
    one sequence at a time: a corpus's masks never need to fit in memory.

    ``min_quality`` keeps the sequences whose estimated J (``quality``, vosbatch.quality) is at least that,
    ``min_frame_quality`` the frames whose own estimate is. A missing estimate never passes: a run made
    without one (before vosbatch 0.2.0, or without a calibrated model) is refused with the reason."""
    store = RunStore(str(run_uri))
    store.read_run_info()  # a run, or one line saying why not
    keys = store.mask_keys()
    if not keys:
        raise InputError(f"{run_uri}: no masks in this run")
    if min_quality is not None or min_frame_quality is not None:
        quality = {(r["dataset"], r["sequence"]): r["quality"]
                   for r in store.read_metrics(columns=["dataset", "sequence", "quality"])}
        if all(v is None for v in quality.values()):
            raise InputError(f"{run_uri}: this run has no quality estimate (made before vosbatch 0.2.0, or without a "
                             "calibrated model for its method), so --min-quality / --min-frame-quality cannot filter it")
        if min_quality is not None:
            keys = [k for k in keys if quality.get(k) is not None and quality[k] >= min_quality]
    several = len({d for d, _ in keys}) > 1
    n = 0
    for dataset, sequence in keys:
        table = store.read_masks(dataset, sequence).select(["frame_name", "mask_png", "quality"])
        base = Path(png_dir) / (dataset if several else "") / sequence
        for name, png, q in zip(table.column("frame_name").to_pylist(), table.column("mask_png").to_pylist(),
                                table.column("quality").to_pylist()):
            if min_frame_quality is not None and (q is None or q < min_frame_quality):
                continue
            write_davis_png(decode_mask(png), base / f"{name}.png")
            n += 1
    return n
