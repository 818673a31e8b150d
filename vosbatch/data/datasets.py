"""Benchmark datasets by name: one entry point for the command line and the driver."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..errors import InputError
from .davis import davis_sequences
from .fbms import fbms_sequences
from .segtrackv2 import segtrackv2_sequences
from .sequence import Sequence

#: Dataset names ``list_sequences`` (and ``--dataset``) accept.
DATASETS = ("davis2016", "segtrackv2", "fbms59")


def list_sequences(dataset: str, root: Path, split: str = "val", sequences: Optional[List[str]] = None) -> List[Sequence]:
    """Describe a benchmark's sequences (paths only) in its official layout under ``root``.

    ``split``: DAVIS 2016 ``train``/``val``/``all``; SegTrack-v2 has a single set (``split`` is
    ignored); FBMS-59 ``val`` and ``test`` both mean the test set (what unsupervised VOS reports),
    ``train`` the training set, ``all`` both. Unknown sequence names yield Sequences whose
    ``missing_reason`` says so.
    """
    if dataset == "davis2016":
        return davis_sequences(root, split=split, sequences=sequences, dataset=dataset)
    if dataset == "segtrackv2":
        return segtrackv2_sequences(root, sequences=sequences, dataset=dataset)
    if dataset == "fbms59":
        return fbms_sequences(root, split=split, sequences=sequences, dataset=dataset)
    raise InputError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
