"""One sequence, start to finish, on whichever process holds a :class:`VideoSegmenter`.

Every failure that belongs to the input (or to writing it) turns into a ``failed`` metrics row with
the message; nothing here lets one bad sequence stop a batch.
"""
from __future__ import annotations

import json
import resource
import time
import traceback
from typing import Dict, Optional


from ..config import RunConfig
from ..data.sequence import Sequence
from ..errors import VosbatchError
from ..io.priors import load_prior_masks
from ..io.store import RunStore
from ..metrics import evaluate_sequence
from ..pipeline import VideoSegmenter


def failed_row(seq: Sequence, cfg: RunConfig, error: str, seconds: float = 0.0) -> Dict:
    return {
        "dataset": seq.dataset, "sequence": seq.name, "method": cfg.method, "frames": seq.num_frames,
        "seconds": seconds, "status": "failed", "error": error, "config_hash": cfg.digest(),
    }


def process_sequence(segmenter: VideoSegmenter, seq: Sequence, store: Optional[RunStore]) -> Dict:
    """Segment, score (when GT exists) and store one sequence; returns its metrics row."""
    cfg = segmenter.cfg
    t0 = time.perf_counter()
    try:
        t_load = time.perf_counter()
        frames = seq.load_frames()
        gt = seq.load_gt(frames.shape[1:3])
        load_s = time.perf_counter() - t_load
        prior = None
        if cfg.refine_from:
            prior = load_prior_masks(cfg.refine_from, seq.dataset, seq.name, seq.frame_names)
        result = segmenter.segment(frames, prior=prior)
        row = {
            "dataset": seq.dataset, "sequence": seq.name, "method": cfg.method, "frames": int(len(frames)),
            "status": "ok", "error": None, "config_hash": cfg.digest(),
        }
        t_eval = time.perf_counter()
        if gt is not None:
            scores = evaluate_sequence(list(result.masks), gt)
            row.update({k: float(getattr(scores, k)) for k in ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")})
            # every intermediate stage the method reports (init, IKE cycles...) is scored the same way
            stage_scores = {}
            for stage, stage_masks in result.stage_masks.items():
                s = evaluate_sequence(list(stage_masks), gt)
                stage_scores[stage] = {"j_mean": round(float(s.j_mean), 5), "f_mean": round(float(s.f_mean), 5)}
            if "init" in stage_scores:
                row.update(init_j_mean=stage_scores["init"]["j_mean"], init_f_mean=stage_scores["init"]["f_mean"])
            if stage_scores:
                row["stage_scores"] = json.dumps(stage_scores)
        seconds = {"load": load_s, **result.seconds, "eval": time.perf_counter() - t_eval}
        if store is not None:
            t_w = time.perf_counter()
            store.write_masks(seq.dataset, seq.name, seq.frame_names, result.masks)
            seconds["write"] = time.perf_counter() - t_w
        row["seconds"] = time.perf_counter() - t0
        row["seconds_by_stage"] = json.dumps({k: round(v, 4) for k, v in seconds.items()})
        row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # this worker, so far
    except VosbatchError as e:
        row = failed_row(seq, cfg, str(e), time.perf_counter() - t0)
    except Exception as e:  # a bug or an unexpected library error: record it, keep the batch going
        tb = traceback.format_exc(limit=3)
        row = failed_row(seq, cfg, f"{type(e).__name__}: {e} [{seq.name}]\n{tb}", time.perf_counter() - t0)
    if store is not None:
        store.write_metrics(seq.dataset, seq.name, row)
    return row
