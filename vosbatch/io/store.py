"""Where a run's files live: local disk or S3, behind pyarrow's filesystem layer.

Layout of a run (``OUTPUT/RUN_ID/``)::

    run.json                                               configuration, code version, times, host
    masks/dataset=<d>/sequence=<s>/part-0.parquet          one row per frame
    metrics/dataset=<d>/sequence=<s>/part-0.parquet        one row per sequence

Both tables are Hive-partitioned datasets: ``pyarrow.dataset.dataset(path, partitioning="hive")``
(or Spark, DuckDB, Ray Data) reads them whole, and each sequence is a file of its own, so a
sequence's results appear or are replaced atomically and reruns never touch other sequences.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from typing import Dict, Iterable, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import OutputError
from .fs import endpoint_options, filesystem_for
from .png import encode_mask

log = logging.getLogger(__name__)

#: Whole-object attempts for one S3 PUT (the SDK also retries each request inside an attempt).
PUT_ATTEMPTS = 5
#: First backoff between attempts, doubled each time (seconds).
PUT_BACKOFF_S = 0.5

MASK_SCHEMA = pa.schema(
    [
        ("frame", pa.int32()),
        ("frame_name", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("mask_png", pa.binary()),
        ("foreground_fraction", pa.float32()),
    ]
)

METRIC_FIELDS = [
    ("method", pa.string()),
    ("frames", pa.int32()),
    ("j_mean", pa.float64()),
    ("j_recall", pa.float64()),
    ("j_decay", pa.float64()),
    ("f_mean", pa.float64()),
    ("f_recall", pa.float64()),
    ("f_decay", pa.float64()),
    ("seconds", pa.float64()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("config_hash", pa.string()),
    ("init_j_mean", pa.float64()),
    ("init_f_mean", pa.float64()),
    ("seconds_by_stage", pa.string()),  # JSON {stage: seconds}
    ("peak_rss_gb", pa.float64()),  # peak resident memory of the worker process after this sequence
    ("stage_scores", pa.string()),
    ("windows", pa.int32()),  # how many overlapping windows the video was segmented in
    ("window_overlap_iou", pa.float64()),  # mean IoU of consecutive windows' masks on their shared frames  # JSON {stage: {j_mean, f_mean}} for the method's intermediate masks
]
METRIC_SCHEMA = pa.schema(METRIC_FIELDS)


class RunStore:
    """Read and write one run's files, atomically per file."""

    def __init__(self, run_uri: str, endpoint_url: Optional[str] = None, **s3_options) -> None:
        """``endpoint_url``: an S3-compatible server (MinIO, Ceph, moto...) instead of AWS; credentials
        always come from the standard AWS chain (environment, profile, instance role), never from here."""
        self.uri = run_uri.rstrip("/")
        if endpoint_url and run_uri.startswith("s3://"):
            s3_options = dict(s3_options, **endpoint_options(endpoint_url))
        self.fs, self.root = filesystem_for(run_uri, **s3_options)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    # -- low level -------------------------------------------------------------------------
    def _put_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object. Local: temporary name + rename (atomic on POSIX). S3: one PUT of the
        whole body (an object appears whole or not at all), retried with backoff on errors."""
        path = f"{self.root}/{rel}"
        parent = path.rsplit("/", 1)[0]
        if self.is_local:
            try:
                self.fs.create_dir(parent, recursive=True)
                tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
                os.replace(tmp, path)
            except (OSError, pa.ArrowException) as e:
                raise OutputError(f"{self.uri}/{rel}: cannot write ({e})") from e
            return
        for attempt in range(1, PUT_ATTEMPTS + 1):
            try:
                with self.fs.open_output_stream(path) as f:
                    f.write(data)
                return
            except (OSError, pa.ArrowException) as e:
                if attempt == PUT_ATTEMPTS:
                    raise OutputError(f"{self.uri}/{rel}: cannot write after {attempt} attempts ({e})") from e
                log.warning("%s/%s: PUT failed (attempt %d/%d): %s", self.uri, rel, attempt, PUT_ATTEMPTS, e)
                time.sleep(PUT_BACKOFF_S * 2 ** (attempt - 1))

    def _put_table(self, rel: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self._put_bytes(rel, sink.getvalue())

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{rel}").type != pafs.FileType.NotFound

    def check_writable(self) -> None:
        """Fail early, naming the location, when the run folder cannot be written."""
        self._put_bytes(".write-test", b"ok")
        try:
            self.fs.delete_file(f"{self.root}/.write-test")
        except OSError:
            pass

    # -- run files -------------------------------------------------------------------------
    @staticmethod
    def partition(kind: str, dataset: str, sequence: str) -> str:
        return f"{kind}/dataset={dataset}/sequence={sequence}/part-0.parquet"

    def write_run_info(self, info: dict) -> None:
        self._put_bytes("run.json", json.dumps(info, indent=2, sort_keys=True, default=str).encode())

    def read_run_info(self) -> dict:
        with self.fs.open_input_stream(f"{self.root}/run.json") as f:
            return json.loads(f.read())

    def write_masks(self, dataset: str, sequence: str, frame_names: List[str], masks: np.ndarray) -> None:
        t, h, w = masks.shape
        self.write_mask_pngs(dataset, sequence, frame_names, [encode_mask(m) for m in masks], h, w,
                             masks.reshape(t, -1).mean(1))

    def write_mask_pngs(self, dataset: str, sequence: str, frame_names: List[str], pngs: List[bytes], height: int,
                        width: int, foreground_fraction) -> None:
        """Masks already PNG-encoded (long videos keep only these, a few KB per frame)."""
        t = len(pngs)
        table = pa.table(
            {
                "frame": pa.array(np.arange(t, dtype=np.int32)),
                "frame_name": pa.array(frame_names, pa.string()),
                "height": pa.array(np.full(t, height, np.int32)),
                "width": pa.array(np.full(t, width, np.int32)),
                "mask_png": pa.array(pngs, pa.binary()),
                "foreground_fraction": pa.array(np.asarray(foreground_fraction, np.float32)),
            },
            schema=MASK_SCHEMA,
        )
        self._put_table(self.partition("masks", dataset, sequence), table)

    def write_metrics(self, dataset: str, sequence: str, row: Dict) -> None:
        cols = {name: [row.get(name)] for name, _ in METRIC_FIELDS}
        self._put_table(self.partition("metrics", dataset, sequence), pa.table(cols, schema=METRIC_SCHEMA))

    def _read_dataset(self, kind: str, columns: Optional[Iterable[str]] = None, filter=None) -> pa.Table:
        base = f"{self.root}/{kind}"
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return pa.table({})
        ds = pads.dataset(base, filesystem=self.fs, format="parquet", partitioning="hive",
                          exclude_invalid_files=True)
        return ds.to_table(columns=list(columns) if columns else None, filter=filter)

    def read_metrics(self) -> List[Dict]:
        rows = self._read_dataset("metrics").to_pylist()
        return sorted(rows, key=lambda r: (str(r.get("dataset")), str(r.get("sequence"))))

    def completed(self, config_hash: str) -> set:
        """(dataset, sequence) pairs finished with this configuration whose masks are stored: what a
        resumed run skips. Failed rows, other configurations and metrics without masks are redone."""
        rows = self._read_dataset("metrics", columns=["dataset", "sequence", "status", "config_hash"]).to_pylist()
        done = {(r["dataset"], r["sequence"]) for r in rows if r["status"] == "ok" and r["config_hash"] == config_hash}
        return done & self._stored("masks")

    def _stored(self, kind: str) -> set:
        """(dataset, sequence) of every ``kind`` file, from one recursive listing (not a request per
        sequence: a resumed corpus run may hold millions on S3)."""
        base = f"{self.root}/{kind}"
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException):
            return set()
        keys = set()
        for info in infos:
            parts = info.path[len(base) + 1:].split("/")
            if len(parts) == 3 and parts[2] == "part-0.parquet" and parts[0].startswith("dataset=") \
                    and parts[1].startswith("sequence="):
                keys.add((parts[0][len("dataset="):], parts[1][len("sequence="):]))
        return keys

    def read_masks(self, dataset: Optional[str] = None, sequence: Optional[str] = None) -> pa.Table:
        flt = None
        if dataset is not None:
            flt = pads.field("dataset") == dataset
        if sequence is not None:
            f2 = pads.field("sequence") == sequence
            flt = f2 if flt is None else flt & f2
        table = self._read_dataset("masks", filter=flt)
        return table.sort_by([("dataset", "ascending"), ("sequence", "ascending"), ("frame", "ascending")]) if table.num_rows else table
