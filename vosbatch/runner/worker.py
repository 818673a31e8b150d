"""One sequence, start to finish, on whichever process holds a :class:`VideoSegmenter`.

Long videos are segmented window by window (:mod:`.windows`): only one window's frames, flows and
masks are in memory at a time; what is kept of each window is its PNG-encoded masks and per-frame
scores, so memory does not grow with the length of the video.

Every failure that belongs to the input (or to writing it) turns into a ``failed`` metrics row with
the message; nothing here lets one bad sequence stop a batch. Masks are written before metrics, so a
sequence whose metrics say ``ok`` always has its masks (what a resumed run relies on).
"""
from __future__ import annotations

import json
import resource
from contextlib import nullcontext
import time
import traceback
from collections import defaultdict
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np

from ..config import RunConfig
from ..data.sequence import Sequence
from ..errors import InputError, VosbatchError
from ..io.png import encode_mask
from ..io.priors import load_prior_masks
from ..io.store import RunStore
from ..metrics import frame_scores, scored_frames, scores_from_frames
from ..progress import listening, report
from .progress import SequenceProgress
from .windows import plan_windows

if TYPE_CHECKING:  # the driver imports this module without the models (torch): only an actor builds them
    from ..pipeline import VideoSegmenter

SCORE_KEYS = ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")


def failed_row(seq: Sequence, cfg: RunConfig, error: str, seconds: float = 0.0) -> Dict:
    return {
        "dataset": seq.dataset, "sequence": seq.name, "method": cfg.method, "frames": seq.num_frames,
        "seconds": seconds, "status": "failed", "error": error, "config_hash": cfg.digest(),
    }


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _StageScores:
    """Per-frame J/F of one stage's masks, accumulated window by window on the scored frames."""

    def __init__(self) -> None:
        self.frames: List[int] = []
        self.j: List[np.ndarray] = []
        self.f: List[np.ndarray] = []

    def add(self, frame_ids: List[int], preds: List[np.ndarray], gts: List[np.ndarray]) -> None:
        if frame_ids:
            j, f = frame_scores(preds, gts, first_index=frame_ids[0])
            self.frames += frame_ids
            self.j.append(j)
            self.f.append(f)

    def result(self):
        return scores_from_frames(np.concatenate(self.j), np.concatenate(self.f)) if self.frames else None


def segment_sequence(segmenter: "VideoSegmenter", seq: Sequence, seconds: Dict[str, float],
                     progress: Optional[SequenceProgress] = None) -> Dict:
    """Segment ``seq`` window by window. Returns the PNG masks, their size, foreground fractions,
    per-stage scores (when GT exists) and the windows' overlap agreement; adds timings to ``seconds``;
    tells ``progress`` how far each window's stages are."""
    cfg = segmenter.cfg
    seq.check()
    n = seq.num_frames
    names = seq.frame_names
    windows = plan_windows(n, cfg.window_frames, cfg.window_overlap)
    scored = set(scored_frames(n, getattr(seq, "exclude_first_last", True)))
    # what carries over between windows: kept masks, scores, the previous window's masks on shared frames
    state = {"pngs": [], "fg": [], "scores": defaultdict(_StageScores), "overlap_ious": [], "carried": None,
             "size": None, "gt_frames": 0, "signals": defaultdict(list)}
    for wi, win in enumerate(windows):
        if progress is not None:
            progress.start_window(win.keep_stop - win.keep_start)
        with listening(progress) if progress is not None else nullcontext():
            _segment_window(segmenter, seq, windows, wi, win, names, scored, seconds, state)
    return {"pngs": state["pngs"], "size": state["size"], "fg": state["fg"],
            "scores": {k: v.result() for k, v in state["scores"].items()}, "windows": len(windows),
            "overlap_ious": state["overlap_ious"], "gt_frames": state["gt_frames"],
            "signals": {k: np.concatenate(v) for k, v in state["signals"].items()}}


def _segment_window(segmenter: "VideoSegmenter", seq: Sequence, windows, wi: int, win, names: List[str], scored: set,
                    seconds: Dict[str, float], state: Dict) -> None:
    """One window: load, segment, keep its masks and scores in ``state`` (what carries over between windows)."""
    cfg = segmenter.cfg
    size = state["size"]
    t0 = time.perf_counter()
    frames = seq.load_frames(win.start, win.stop) if len(windows) > 1 else seq.load_frames()
    if size is None:
        size = state["size"] = frames.shape[1:3]
    elif frames.shape[1:3] != size:
        raise InputError(f"{seq.name}: frame size changes at frame {win.start} (from {size[1]}x{size[0]})")
    gt = seq.load_gt(size, win.start, win.stop) if len(windows) > 1 else seq.load_gt(size)
    prior = load_prior_masks(cfg.refine_from, seq.dataset, seq.name, names[win.start:win.stop]) if cfg.refine_from else None
    seconds["load"] = seconds.get("load", 0.0) + time.perf_counter() - t0
    report("load", 1.0)
    # intermediate stages are binarised only to be scored: without GT that would be wasted work
    result = segmenter.segment(frames, prior=prior, keep_stages=gt is not None)
    for k, v in result.seconds.items():
        seconds[k] = seconds.get(k, 0.0) + v
    t0 = time.perf_counter()
    carried = state["carried"]
    if carried is not None:  # agreement of the two windows on their shared frames
        shared = result.masks[: len(carried)]
        inter = (shared & carried).sum()
        union = (shared | carried).sum()
        state["overlap_ious"].append(float(inter / union) if union else 1.0)
    keep = slice(win.keep_start - win.start, win.keep_stop - win.start)
    kept = result.masks[keep]
    state["pngs"] += [encode_mask(m) for m in kept]
    state["fg"] += kept.reshape(len(kept), -1).mean(1).tolist()
    for name, values in result.signals.items():
        state["signals"][name].append(values[keep])
    if wi + 1 < len(windows):
        state["carried"] = result.masks[windows[wi + 1].start - win.start:].copy()
    if gt is not None:
        ids = [t for t in range(win.keep_start, win.keep_stop) if t in scored and gt[t - win.start] is not None]
        gts = [gt[t - win.start] for t in ids]
        state["gt_frames"] += len(ids)
        for stage, masks in [("final", result.masks), *result.stage_masks.items()]:
            state["scores"][stage].add(ids, [masks[t - win.start] for t in ids], gts)
    seconds["eval"] = seconds.get("eval", 0.0) + time.perf_counter() - t0


def estimate_quality(method: str, signals: Dict[str, np.ndarray], row: Dict):
    """The calibrated estimate (vosbatch.quality) of each frame and of the sequence, into ``row``; returns the
    frames' estimates (None without a model) and their signals as JSON (kept for refitting)."""
    from ..quality import load_model, sequence_signals

    if not signals:
        return None, None
    seq_signals = sequence_signals(signals)
    if row.get("window_overlap_iou") is not None:
        seq_signals["window_overlap_iou"] = row["window_overlap_iou"]
    row["quality_signals"] = json.dumps({k: round(v, 5) for k, v in seq_signals.items()})
    model = load_model(method)
    frames = None
    if model is not None:
        frames = model.frames(signals).astype(np.float32)
        row["quality"] = model.sequence(frames)
    names = list(signals)
    per_frame = [json.dumps({k: round(float(signals[k][t]), 5) for k in names}) for t in range(len(signals[names[0]]))]
    return frames, per_frame


def process_sequence(segmenter: "VideoSegmenter", seq: Sequence, store: Optional[RunStore],
                     progress: Optional[SequenceProgress] = None, extra: Optional[Dict] = None) -> Dict:
    """Segment, score (when GT exists) and store one sequence; returns its metrics row. ``extra``: further
    columns of the row (the driver's retry count, the node)."""
    cfg = segmenter.cfg
    extra = extra or {}
    t0 = time.perf_counter()
    try:
        seconds: Dict[str, float] = {}
        out = segment_sequence(segmenter, seq, seconds, progress)
        row = {
            "dataset": seq.dataset, "sequence": seq.name, "method": cfg.method, "frames": len(out["pngs"]),
            "status": "ok", "error": None, "config_hash": cfg.digest(), "windows": out["windows"], **extra,
        }
        final = out["scores"].get("final")
        if seq.gt_paths is not None:
            row["gt_frames"] = out["gt_frames"]
            if seq.meta.get("gt_missing"):  # a generic GT folder may annotate some frames only: say which are not scored
                row["warning"] = (f"{seq.meta['gt_folder']}: no mask for {seq.meta['gt_missing_count']} of "
                                  f"{len(seq.gt_paths)} frames ({', '.join(seq.meta['gt_missing'])}...); not scored")
        if final is not None:
            row.update({k: float(getattr(final, k)) for k in SCORE_KEYS})
            # every intermediate stage the method reports (init, IKE cycles...) is scored the same way
            stage_scores = {stage: {"j_mean": round(float(s.j_mean), 5), "f_mean": round(float(s.f_mean), 5)}
                            for stage, s in out["scores"].items() if stage != "final" and s is not None}
            if "init" in stage_scores:
                row.update(init_j_mean=stage_scores["init"]["j_mean"], init_f_mean=stage_scores["init"]["f_mean"])
            if stage_scores:
                row["stage_scores"] = json.dumps(stage_scores)
        if out["overlap_ious"]:
            row["window_overlap_iou"] = float(np.mean(out["overlap_ious"]))
        frame_quality, frame_signals_json = estimate_quality(cfg.method, out["signals"], row)
        if store is not None:
            t_w = time.perf_counter()
            h, w = out["size"]
            store.write_mask_pngs(seq.dataset, seq.name, seq.frame_names, out["pngs"], h, w, out["fg"],
                                  quality=frame_quality, quality_signals=frame_signals_json)
            seconds["write"] = time.perf_counter() - t_w
        row["seconds"] = time.perf_counter() - t0
        row["seconds_by_stage"] = json.dumps({k: round(v, 4) for k, v in seconds.items()})
        row["peak_rss_gb"] = peak_rss_gb()  # this worker, so far
    except VosbatchError as e:
        row = dict(failed_row(seq, cfg, str(e), time.perf_counter() - t0), **extra)
    except Exception as e:  # a bug or an unexpected library error: record it, keep the batch going
        tb = traceback.format_exc(limit=3)
        row = dict(failed_row(seq, cfg, f"{type(e).__name__}: {e} [{seq.name}]\n{tb}", time.perf_counter() - t0), **extra)
    if store is not None:
        try:
            store.write_metrics(seq.dataset, seq.name, row)
        except VosbatchError as e:  # the row still reaches the driver, which reports it
            row = dict(failed_row(seq, cfg, f"metrics not stored: {e}", row.get("seconds") or 0.0), **extra)
    return row
