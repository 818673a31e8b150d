"""What a report shows, gathered from run folders (local or S3) and, when reachable, the dataset.

Kept apart from the HTML so the numbers can be tested (and reused) without a browser.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import VosbatchError
from ..io.png import decode_mask
from ..io.runs import Key, RunView, finite as _finite
from ..metrics import jaccard



def jf(row: dict) -> Optional[float]:
    j, f = row.get("j_mean"), row.get("f_mean")
    return (j + f) / 2 if _finite(j) and _finite(f) else None


def stage_seconds(row: dict) -> Dict[str, float]:
    """``seconds_by_stage`` (a JSON string in the metrics table) as a dict; {} when absent/bad."""
    raw = row.get("seconds_by_stage")
    if not raw:
        return {}
    try:
        d = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return {}
    return {str(k): float(v) for k, v in d.items() if _finite(v)}


def summary(run: RunView) -> Dict[str, Optional[float]]:
    """Run-level numbers for the header cards: means over the scored sequences."""
    ok = run.ok_rows()
    done = [r for r in run.rows.values() if r.get("status") == "ok"]
    frames = sum(int(r.get("frames") or 0) for r in done)
    seconds = sum(float(r.get("seconds") or 0.0) for r in done)
    mean = lambda k: float(np.mean([r[k] for r in ok])) if ok and all(_finite(r.get(k)) for r in ok) else None  # noqa: E731
    out = {
        "sequences": len(run.rows), "ok": len(done), "failed": len(run.rows) - len(done), "frames": frames,
        "j_mean": mean("j_mean"), "f_mean": mean("f_mean"), "init_j_mean": mean("init_j_mean"),
        "s_per_frame": seconds / frames if frames else None,
        "quality": run.mean_quality(),  # the estimated J: the only quality signal of a run without ground truth
    }
    out["jf_mean"] = (out["j_mean"] + out["f_mean"]) / 2 if out["j_mean"] is not None and out["f_mean"] is not None else None
    return out


@dataclass
class SequenceData:
    """Pixels of one sequence for the overlays: frames and GT when reachable, masks per run."""

    key: Key
    frame_names: List[str]
    frames: Optional[np.ndarray] = None  # (T,H,W,3) uint8
    gt: Optional[np.ndarray] = None  # (T,H,W) bool
    masks: Dict[str, np.ndarray] = field(default_factory=dict)  # label -> (T,H,W) bool
    notes: List[str] = field(default_factory=list)
    _j: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def per_frame_j(self, label: str) -> Optional[np.ndarray]:
        """J of every frame (all frames, unlike the DAVIS means that skip the first and last)."""
        m = self.masks.get(label)
        if m is None or self.gt is None:
            return None
        if label not in self._j:
            self._j[label] = np.array([jaccard(p, g) for p, g in zip(m, self.gt)])
        return self._j[label]

    def foreground(self, label: str) -> Optional[np.ndarray]:
        m = self.masks.get(label)
        return None if m is None else m.reshape(len(m), -1).mean(1)


def read_masks(run: RunView, key: Key) -> Tuple[Optional[np.ndarray], List[str]]:
    """(T,H,W) bool masks of a sequence in frame order, and the frame names; (None, []) if none."""
    table = run.store.read_masks(dataset=key[0], sequence=key[1])
    if table.num_rows == 0:
        return None, []
    rows = table.select(["frame", "frame_name", "mask_png"]).to_pylist()
    rows.sort(key=lambda r: r["frame"])
    return np.stack([decode_mask(r["mask_png"]) for r in rows]), [str(r["frame_name"]) for r in rows]


def resolve_data_root(info: dict, override: Optional[str] = None) -> Optional[Path]:
    """The dataset folder: ``override``, else run.json's ``data_root`` (relative paths are tried
    from the current folder, where ``submit`` was run)."""
    root = override or info.get("data_root")
    return Path(root).expanduser() if root else None


def load_sequence(runs: List[RunView], key: Key, data_root: Optional[Path]) -> SequenceData:
    """Masks of every run that has this sequence, plus frames and GT when the dataset is reachable.

    Anything missing becomes a note on the page rather than an error: a report must still render
    for a run made on another machine.
    """
    data = SequenceData(key, [])
    for run in runs:
        masks, names = read_masks(run, key)
        if masks is None:
            continue
        if data.masks and masks.shape != next(iter(data.masks.values())).shape:
            data.notes.append(f"run {run.label}: masks of shape {masks.shape} differ from the other run's; not shown")
            continue
        data.masks[run.label] = masks
        data.frame_names = data.frame_names or names
    if not data.masks:
        return data
    shape = next(iter(data.masks.values())).shape
    if data_root is None:
        data.notes.append("no data_root in run.json: masks shown without frames")
        return data
    from ..data import davis_sequences

    try:
        seq = davis_sequences(data_root, sequences=[key[1]], dataset=key[0])[0]
        frames = seq.load_frames()
        if frames.shape[:3] != shape:
            data.notes.append(f"frames in {data_root} are {frames.shape[:3]}, masks {shape}: masks shown without frames")
            return data
        data.frames = frames
        gt = seq.load_gt(frames.shape[1:3])
        data.gt = np.stack(gt) if gt is not None else None
        if data.gt is None:
            data.notes.append("no ground truth: foreground fraction shown instead of J")
    except (VosbatchError, OSError, ValueError) as e:
        data.notes.append(f"frames not readable ({e}): masks shown without frames")
    return data


def worst_frames(values: Optional[np.ndarray], k: int = 3) -> List[int]:
    """Indices of the ``k`` lowest values (lowest J first); [] without values."""
    if values is None or len(values) == 0 or k <= 0:
        return []
    order = np.argsort(values, kind="stable")[:k]
    return [int(i) for i in order]
