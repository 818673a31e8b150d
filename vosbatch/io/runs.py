"""A finished (or running) run read back: its ``run.json`` and metric rows, local or ``s3://``.

One reader for everything that looks at runs afterwards (reports, ``vosbatch compare``, the jobs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import InputError
from .store import RunStore

Key = Tuple[str, str]  # (dataset, sequence)


def finite(value) -> bool:
    """A real number (not None, bool, NaN or infinite): what a metric cell must be to be averaged."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class RunView:
    """One run's facts and metric rows, keyed by (dataset, sequence)."""

    uri: str
    store: RunStore
    info: dict
    rows: Dict[Key, dict]
    label: str = ""

    @property
    def name(self) -> str:
        return str(self.info.get("run_id") or self.uri.rstrip("/").rsplit("/", 1)[-1])

    def ok_rows(self) -> List[dict]:
        return [r for r in self.rows.values() if r.get("status") == "ok" and finite(r.get("j_mean"))]

    def mean_quality(self, keys: Optional[Iterable[Key]] = None) -> Optional[float]:
        """Mean estimated J over the finished sequences (or ``keys``); None when any lacks one (a run made
        before the estimate, or a method without a model): a mean over part of a run would mislead."""
        rows = [self.rows[k] for k in keys] if keys is not None else self.rows.values()
        values = [r.get("quality") for r in rows if r.get("status") == "ok"]
        return sum(values) / len(values) if values and all(finite(v) for v in values) else None


def load_run(uri: str, label: str = "", **s3_options) -> RunView:
    """Read run.json and the metrics of a run, failing with one line naming the run when it is not one
    or cannot be reached. ``s3_options`` go to pyarrow's S3FileSystem (the endpoint otherwise comes from
    :func:`vosbatch.io.fs.configure_s3`); credentials come from the standard AWS chain."""
    uri = str(uri)
    store = RunStore(uri, **(s3_options if uri.startswith("s3://") else {}))
    try:
        info = store.read_run_info()
    except InputError as e:
        raise InputError(f"{e} — not a vosbatch run folder?" if "not found" in str(e) else str(e)) from e
    rows = {(str(r.get("dataset")), str(r.get("sequence"))): r for r in store.read_metrics()}
    return RunView(uri, store, info, rows, label)
