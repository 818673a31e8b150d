"""DAVIS 2016 evaluation: region similarity J and boundary accuracy F.

This follows the public DAVIS evaluation code (``davis2017-evaluation``: ``db_eval_iou``,
``f_measure``, ``_seg2bmap``, ``db_statistics``) number for number, written vectorised with
numpy/OpenCV and without a scikit-image dependency.

Protocol
--------
- **J** is the intersection-over-union of the binary masks; two empty masks score 1.
- **F** is the boundary F-measure. Each mask is turned into a one-pixel boundary map
  (:func:`seg2bmap`), each map is dilated by a disk of radius ``ceil(bound_th * diagonal)``
  (8 px at 854x480) and boundary pixels of one mask that fall inside the dilated boundary of the
  other count as matched. Precision is measured on the prediction's boundary, recall on the GT's.
- **Statistics** per sequence (:func:`statistics`): mean, recall (fraction of frames > 0.5) and
  decay (mean of the first quarter minus mean of the last quarter of the frames).
- Per sequence the first and last frames are not scored (:func:`evaluate_sequence`); the dataset
  score is the plain mean over sequences (:func:`summarise`).

Masks may be given as bool, 0/1 or 0/255 arrays of shape (H, W) (a trailing singleton channel
(H, W, 1) is accepted too); any non-zero pixel is foreground, as in the reference.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "METRIC_COLUMNS",
    "SequenceScores",
    "boundary_f",
    "boundary_precision_recall",
    "boundary_radius",
    "disk",
    "evaluate_sequence",
    "format_table",
    "jaccard",
    "seg2bmap",
    "statistics",
    "summarise",
]

METRIC_COLUMNS: Tuple[str, ...] = ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------
def _as_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """A 2-D bool mask from a bool / 0-1 / 0-255 array (non-zero = foreground)."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {np.shape(mask)}")
    if arr.dtype == np.bool_:
        return arr
    return arr != 0


def _pair(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    pred_shape, gt_shape = np.shape(pred), np.shape(gt)
    if pred_shape != gt_shape:
        raise ValueError(f"prediction shape {pred_shape} does not match ground-truth shape {gt_shape}")
    return _as_mask(pred, "prediction"), _as_mask(gt, "ground truth")


# --------------------------------------------------------------------------------------------------
# J: region similarity
# --------------------------------------------------------------------------------------------------
def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & g) / union)


# --------------------------------------------------------------------------------------------------
# F: boundary accuracy
# --------------------------------------------------------------------------------------------------
def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map (bool, same H x W) of a binary mask.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour.
    In the last row only the east neighbour is compared, in the last column only the south one,
    and the bottom-right pixel is never a boundary pixel. (Boundaries are therefore offset by half
    a pixel towards the origin, as in the Berkeley/DAVIS ``seg2bmap``.)
    """
    m = _as_mask(mask)
    b = np.zeros_like(m)
    inner = m[:-1, :-1]
    b[:-1, :-1] = (inner != m[:-1, 1:]) | (inner != m[1:, :-1]) | (inner != m[1:, 1:])
    b[-1, :-1] = m[-1, :-1] != m[-1, 1:]  # last row: east only
    b[:-1, -1] = m[:-1, -1] != m[1:, -1]  # last column: south only
    # b[-1, -1] stays False
    return b


@lru_cache(maxsize=32)
def _disk_cached(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    kernel = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius * radius
    kernel = kernel.astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def disk(radius: int) -> np.ndarray:
    """scikit-image's ``disk(radius)``: (2r+1)x(2r+1) uint8 with 1 where x^2 + y^2 <= r^2.

    (OpenCV's ``MORPH_ELLIPSE`` is a different shape and must not be used for DAVIS F.)
    """
    r = int(radius)
    if r != radius or r < 0:
        raise ValueError(f"disk radius must be a non-negative integer, got {radius!r}")
    return _disk_cached(r).copy()


def boundary_radius(shape: Tuple[int, int], bound_th: float = 0.008) -> int:
    """Dilation radius in pixels: ``ceil(bound_th * hypot(H, W))``, or ``bound_th`` itself if >= 1.

    As in the reference, ``bound_th >= 1`` is read as a radius in pixels; it must then be an
    integer (the reference would build an odd, off-centre disk from a fractional one).
    """
    if not math.isfinite(bound_th) or bound_th < 0:
        raise ValueError(f"bound_th must be a finite non-negative number, got {bound_th!r}")
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"a pixel radius (bound_th >= 1) must be an integer, got {bound_th!r}")
        return int(bound_th)
    h, w = int(shape[0]), int(shape[1])
    return int(np.ceil(bound_th * np.linalg.norm((h, w))))


def _dilate(bmap: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.dilate(bmap.view(np.uint8), kernel).view(np.bool_)


def boundary_precision_recall(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> Tuple[float, float]:
    """Boundary precision and recall of ``pred`` against ``gt`` (see :func:`boundary_f`)."""
    p, g = _pair(pred, gt)
    pred_b = seg2bmap(p)
    gt_b = seg2bmap(g)
    n_pred = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    if n_pred == 0:  # GT has a boundary, prediction has none
        return 1.0, 0.0
    if n_gt == 0:  # prediction has a boundary, GT has none
        return 0.0, 1.0
    kernel = _disk_cached(boundary_radius(p.shape, bound_th))
    pred_dil = _dilate(pred_b, kernel)
    gt_dil = _dilate(gt_b, kernel)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    return float(precision), float(recall)


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure.

    Boundaries come from :func:`seg2bmap`; each is dilated with :func:`disk` of radius
    :func:`boundary_radius` (``cv2.dilate``). precision = |pred boundary ∩ dilated GT boundary| /
    |pred boundary|, recall = |GT boundary ∩ dilated pred boundary| / |GT boundary|. Edge cases as
    in the reference: no prediction boundary but a GT one -> P=1, R=0; the reverse -> P=0, R=1;
    neither -> P=R=1. F = 2PR/(P+R), and 0 when P+R = 0.
    """
    precision, recall = boundary_precision_recall(pred, gt, bound_th)
    if precision + recall == 0:
        return 0.0
    return float(2.0 * precision * recall / (precision + recall))


# --------------------------------------------------------------------------------------------------
# Per-sequence statistics
# --------------------------------------------------------------------------------------------------
def _decay_bin_ids(n: int) -> np.ndarray:
    # Reference: round(linspace(1, n, 5) + 1e-10) - 1 (the epsilon makes .5 round up). Unlike the
    # reference we keep the ids as plain ints: its uint8 cast wraps around past 255 frames.
    return (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)


def statistics(values: np.ndarray) -> Tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, as DAVIS ``db_statistics``.

    - mean: ``nanmean(values)``;
    - recall: fraction of frames with a value > 0.5 (a NaN frame counts as a miss);
    - decay: ``nanmean(bin 0) - nanmean(bin 3)`` where, with ``ids = round(linspace(1, n, 5)) - 1``,
      bin i is ``values[ids[i] : ids[i+1] + 1]`` (neighbouring bins share their boundary frame).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("statistics() needs at least one per-frame value")
    ids = _decay_bin_ids(v.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices -> NaN, silently
        mean = float(np.nanmean(v))
        recall = float(np.mean(v > 0.5))
        first = np.nanmean(v[ids[0] : ids[1] + 1])
        last = np.nanmean(v[ids[3] : ids[4] + 1])
    return mean, recall, float(first - last)


@dataclass
class SequenceScores:
    """DAVIS scores of one sequence. ``j_per_frame``/``f_per_frame`` hold the scored frames only."""

    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float
    frames: int
    j_per_frame: np.ndarray = field(repr=False)
    f_per_frame: np.ndarray = field(repr=False)

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2.0

    def as_row(self, sequence: str | None = None) -> Dict[str, object]:
        """A flat dict (metric columns, ``jf_mean``, ``frames``; ``sequence`` if given) for tables."""
        row: Dict[str, object] = {} if sequence is None else {"sequence": sequence}
        row.update({c: float(getattr(self, c)) for c in METRIC_COLUMNS})
        row["jf_mean"] = self.jf_mean
        row["frames"] = int(self.frames)
        return row


def frame_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], first_index: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of paired masks (``first_index`` only numbers frames in error messages)."""
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predicted frames but {len(gts)} ground-truth frames")
    j_vals = np.empty(len(gts), dtype=np.float64)
    f_vals = np.empty(len(gts), dtype=np.float64)
    for k, (pred, gt) in enumerate(zip(preds, gts)):
        try:
            p, g = _pair(pred, gt)
        except ValueError as exc:
            raise ValueError(f"frame {first_index + k}: {exc}") from None
        j_vals[k] = jaccard(p, g)
        f_vals[k] = boundary_f(p, g)
    return j_vals, f_vals


def scores_from_frames(j_vals: np.ndarray, f_vals: np.ndarray) -> SequenceScores:
    """Sequence statistics from the per-frame values of the scored frames (streamed evaluation of
    long videos scores window by window, then calls this once)."""
    j_vals, f_vals = np.asarray(j_vals, np.float64), np.asarray(f_vals, np.float64)
    if j_vals.size == 0:
        raise ValueError("cannot evaluate an empty sequence")
    j_mean, j_recall, j_decay = statistics(j_vals)
    f_mean, f_recall, f_decay = statistics(f_vals)
    return SequenceScores(j_mean=j_mean, j_recall=j_recall, j_decay=j_decay, f_mean=f_mean, f_recall=f_recall,
                          f_decay=f_decay, frames=int(j_vals.size), j_per_frame=j_vals, f_per_frame=f_vals)


def scored_frames(n: int, exclude_first_last: bool = True) -> range:
    """Which of n frames the protocol scores: DAVIS skips the first and the last frame (a sequence
    of at most 2 frames would have nothing left, so it then scores all of them)."""
    return range(1, n - 1) if exclude_first_last and n > 2 else range(n)


def evaluate_sequence(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    exclude_first_last: bool = True,
) -> SequenceScores:
    """Score one sequence: per-frame J and F, then :func:`statistics` on each.

    ``preds[t]`` and ``gts[t]`` are the masks of frame t. With ``exclude_first_last`` (the DAVIS
    protocol) frames 0 and n-1 are not scored, so n frames are scored on n-2. A sequence of at most
    2 frames would have nothing left: it then falls back to scoring all of its frames.
    """
    n_pred, n_gt = len(preds), len(gts)
    if n_pred != n_gt:
        raise ValueError(f"got {n_pred} predicted frames but {n_gt} ground-truth frames")
    if n_gt == 0:
        raise ValueError("cannot evaluate an empty sequence")
    scored = scored_frames(n_gt, exclude_first_last)
    j_vals, f_vals = frame_scores([preds[t] for t in scored], [gts[t] for t in scored], first_index=scored.start)
    return scores_from_frames(j_vals, f_vals)


# --------------------------------------------------------------------------------------------------
# Dataset level
# --------------------------------------------------------------------------------------------------
def summarise(rows: List[Dict[str, object]]) -> Dict[str, float]:
    """Mean over sequences of each metric column, plus ``jf_mean = (j_mean + f_mean) / 2``.

    ``rows`` are per-sequence dicts holding at least :data:`METRIC_COLUMNS` (other keys ignored).
    """
    if not rows:
        raise ValueError("summarise() needs at least one sequence row")
    out: Dict[str, float] = {}
    for col in METRIC_COLUMNS:
        missing = [i for i, r in enumerate(rows) if col not in r]
        if missing:
            raise ValueError(f"rows {missing} lack metric column {col!r}")
        out[col] = float(np.mean([float(r[col]) for r in rows]))
    out["jf_mean"] = (out["j_mean"] + out["f_mean"]) / 2.0
    return out


_TABLE_HEADERS = ("sequence", "J mean", "J recall", "J decay", "F mean", "F recall", "F decay", "J&F")


def format_table(rows: List[Dict[str, object]]) -> str:
    """Plain-text table: one line per sequence and a final ``mean`` line (see :func:`summarise`)."""

    def cells(name: str, r: Dict[str, object]) -> List[str]:
        vals = [float(r[c]) for c in METRIC_COLUMNS]
        jf = (float(r["j_mean"]) + float(r["f_mean"])) / 2.0
        return [name] + [f"{v:.3f}" for v in vals + [jf]]

    body = [cells(str(r.get("sequence", f"seq{i}")), r) for i, r in enumerate(rows)]
    footer = [cells("mean", summarise(rows))] if rows else []
    all_lines = [list(_TABLE_HEADERS)] + body + footer
    widths = [max(len(line[c]) for line in all_lines) for c in range(len(_TABLE_HEADERS))]

    def fmt(line: List[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(widths[c + 1]) for c, cell in enumerate(line[1:])]
        return "  ".join([first] + rest).rstrip()

    rule = "-" * len(fmt(all_lines[0]))
    out = [fmt(all_lines[0]), rule] + [fmt(line) for line in body]
    if footer:
        out += [rule, fmt(footer[0])]
    return "\n".join(out)
