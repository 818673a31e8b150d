"""Masks from elsewhere, used as a prior by a refining method (``--refine-from RUN_OR_DIR``).

A source is either a vosbatch run (local or ``s3://``, identified by its ``run.json``) or a
DAVIS-layout PNG folder ``DIR/<sequence>/<frame>.png``. Frames are matched by name, so a prior
made at another frame rate or for a subset of frames fails loudly instead of misaligning.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from ..errors import InputError
from .png import decode_mask
from .store import RunStore


def _is_run(source: str) -> bool:
    if source.startswith("s3://"):
        return True
    return (Path(source) / "run.json").is_file()


def load_prior_masks(source: str, dataset: str, sequence: str, frame_names: List[str]) -> np.ndarray:
    """(T,H,W) float32 0/1 masks of ``sequence`` from ``source``, one per frame name."""
    if _is_run(source):
        table = RunStore(source).read_masks(dataset=dataset, sequence=sequence)
        if table.num_rows == 0:
            raise InputError(f"{source}: the run has no masks for {dataset}/{sequence} (needed by --refine-from)")
        by_name = {str(n): m for n, m in zip(table.column("frame_name").to_pylist(), table.column("mask_png").to_pylist())}
        decode = lambda name: decode_mask(by_name[name])  # noqa: E731
    else:
        from ..data.sequence import read_mask

        folder = Path(source) / sequence
        if not folder.is_dir():
            raise InputError(f"{folder}: no prior masks for sequence {sequence!r} (needed by --refine-from)")
        by_name = {p.stem: p for p in folder.glob("*.png")}
        decode = lambda name: read_mask(by_name[name])  # noqa: E731
    missing = [n for n in frame_names if n not in by_name]
    if missing:
        raise InputError(f"{source}: prior masks for {sequence!r} lack {len(missing)} frame(s), e.g. {missing[0]!r}")
    return np.stack([decode(n) for n in frame_names]).astype(np.float32)
