"""Where a run's files live: local disk or S3, behind pyarrow's filesystem layer.

Layout of a run (``OUTPUT/RUN_ID/``)::

    run.json                                               configuration, submit options, status, code version
    masks/dataset=<d>/sequence=<s>/part-0.parquet          one row per frame, one file per sequence
    metrics/dataset=<d>/sequence=<s>/part-0.parquet        one row per sequence
    events/part-<time>-<id>.parquet                        retries: sequence, attempt, reason, time
    compacted/CURRENT, compacted/g<N>/{masks,metrics}-*.parquet   after `vosbatch compact` (io.compact)

Workers write each sequence's files whole, so a sequence's results appear or are replaced atomically and
reruns never touch other sequences. Compaction folds finished sequences into a few large files; every
reader here sees the union, a sequence's own files winning over its compacted rows.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import InputError, OutputError
from ..names import check_name
from .fs import filesystem_for
from .png import encode_mask

log = logging.getLogger(__name__)

#: Whole-object attempts for one S3 PUT (the SDK also retries each request inside an attempt).
PUT_ATTEMPTS = 5
#: First backoff between attempts, doubled each time (seconds).
PUT_BACKOFF_S = 0.5

Key = Tuple[str, str]  # (dataset, sequence)
KEY_FIELDS = [("dataset", pa.string()), ("sequence", pa.string())]

MASK_FIELDS = [
    ("frame", pa.int32()),
    ("frame_name", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("mask_png", pa.binary()),
    ("foreground_fraction", pa.float32()),
    ("quality", pa.float32()),  # the frame's predicted J (vosbatch.quality); null without a calibrated model
    ("quality_signals", pa.string()),  # JSON: the signals it was predicted from
]
MASK_SCHEMA = pa.schema(MASK_FIELDS)

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
    ("stage_scores", pa.string()),  # JSON {stage: {j_mean, f_mean}} for the method's intermediate masks
    ("windows", pa.int32()),  # how many overlapping windows the video was segmented in
    ("window_overlap_iou", pa.float64()),  # mean IoU of consecutive windows' masks on their shared frames
    ("gt_frames", pa.int32()),  # frames the score is over (annotated and scored by the protocol)
    ("warning", pa.string()),  # something the row's numbers should be read with (e.g. ground truth with holes)
    ("retries", pa.int32()),  # times a dead worker made this sequence start again, over all resumes
    ("node", pa.string()),  # the Ray node that segmented it
    ("peak_gpu_gb", pa.float64()),  # peak GPU memory the actor had allocated after this sequence (GPU actors)
    ("quality", pa.float64()),  # the sequence's predicted J (vosbatch.quality); null without a calibrated model
    ("quality_signals", pa.string()),  # JSON: the sequence's signals
]
METRIC_SCHEMA = pa.schema(METRIC_FIELDS)
EVENT_SCHEMA = pa.schema([*KEY_FIELDS, ("event", pa.string()), ("attempt", pa.int32()), ("reason", pa.string()),
                          ("time", pa.timestamp("ms", tz="UTC"))])
COMPACT_SCHEMAS = {"masks": pa.schema(KEY_FIELDS + MASK_FIELDS), "metrics": pa.schema(KEY_FIELDS + METRIC_FIELDS)}


def _metric_schema(columns: Optional[Iterable[str]] = None) -> pa.Schema:
    schema = pa.schema(KEY_FIELDS + METRIC_FIELDS)
    return pa.schema([schema.field(c) for c in columns]) if columns else schema


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones (files of older versions) as nulls."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _keys_column(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table.column("dataset").cast(pa.string()), table.column("sequence").cast(pa.string()),
                                       "\x00")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class RunStore:
    """Read and write one run's files, atomically per file."""

    def __init__(self, run_uri: str, **s3_options) -> None:
        """``s3_options``: pyarrow ``S3FileSystem`` options; the endpoint and credentials otherwise come from
        the environment (:func:`vosbatch.io.fs.configure_s3`, the standard AWS chain), never from here."""
        self.uri = str(run_uri).rstrip("/")
        self.fs, self.root = filesystem_for(self.uri, **s3_options)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    # -- low level -------------------------------------------------------------------------
    @contextmanager
    def reading(self, rel: str = ""):
        """Turn a storage error into one :class:`InputError` line naming the URI."""
        try:
            yield
        except FileNotFoundError as e:
            raise InputError(f"{self.uri}/{rel}".rstrip("/") + f": not found ({_first_line(e)})") from e
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{self.uri}/{rel}".rstrip("/") + f": cannot read ({_first_line(e)})") from e

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
                raise OutputError(f"{self.uri}/{rel}: cannot write ({_first_line(e)})") from e
            return
        for attempt in range(1, PUT_ATTEMPTS + 1):
            try:
                with self.fs.open_output_stream(path) as f:
                    f.write(data)
                return
            except (OSError, pa.ArrowException) as e:
                if attempt == PUT_ATTEMPTS:
                    raise OutputError(f"{self.uri}/{rel}: cannot write after {attempt} attempts ({_first_line(e)})") from e
                log.warning("%s/%s: PUT failed (attempt %d/%d): %s", self.uri, rel, attempt, PUT_ATTEMPTS, e)
                time.sleep(PUT_BACKOFF_S * 2 ** (attempt - 1))

    def _put_table(self, rel: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self._put_bytes(rel, sink.getvalue())

    def exists(self, rel: str) -> bool:
        with self.reading(rel):
            return self.fs.get_file_info(f"{self.root}/{rel}").type != pafs.FileType.NotFound

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(f"{self.root}/{rel}")
        except FileNotFoundError:
            pass

    # -- run files -------------------------------------------------------------------------
    @staticmethod
    def partition(kind: str, dataset: str, sequence: str) -> str:
        """``KIND/dataset=D/sequence=S/part-0.parquet``; refuses names that could leave the run's folder."""
        try:
            check_name(dataset, "dataset name")
            check_name(sequence, "sequence name")
        except ValueError as e:
            raise OutputError(str(e)) from e
        return f"{kind}/dataset={dataset}/sequence={sequence}/part-0.parquet"

    def write_run_info(self, info: dict) -> None:
        self._put_bytes("run.json", json.dumps(info, indent=2, sort_keys=True, default=str).encode())

    def read_run_info(self) -> dict:
        with self.reading("run.json"), self.fs.open_input_stream(f"{self.root}/run.json") as f:
            data = f.read()
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise InputError(f"{self.uri}/run.json: not valid JSON ({e})") from e

    def write_masks(self, dataset: str, sequence: str, frame_names: List[str], masks: np.ndarray) -> None:
        t, h, w = masks.shape
        self.write_mask_pngs(dataset, sequence, frame_names, [encode_mask(m) for m in masks], h, w,
                             masks.reshape(t, -1).mean(1))

    def write_mask_pngs(self, dataset: str, sequence: str, frame_names: List[str], pngs: List[bytes], height: int,
                        width: int, foreground_fraction, quality=None, quality_signals=None) -> None:
        """Masks already PNG-encoded (long videos keep only these, a few KB per frame)."""
        rel = self.partition("masks", dataset, sequence)
        t = len(pngs)
        quality = pa.array(np.asarray(quality, np.float32)) if quality is not None else pa.nulls(t, pa.float32())
        table = pa.table(
            {
                "frame": pa.array(np.arange(t, dtype=np.int32)),
                "frame_name": pa.array(frame_names, pa.string()),
                "height": pa.array(np.full(t, height, np.int32)),
                "width": pa.array(np.full(t, width, np.int32)),
                "mask_png": pa.array(pngs, pa.binary()),
                "foreground_fraction": pa.array(np.asarray(foreground_fraction, np.float32)),
                "quality": quality,
                "quality_signals": pa.array(quality_signals if quality_signals is not None else [None] * t, pa.string()),
            },
            schema=MASK_SCHEMA,
        )
        self._put_table(rel, table)

    def write_metrics(self, dataset: str, sequence: str, row: Dict) -> None:
        rel = self.partition("metrics", dataset, sequence)
        cols = {name: [row.get(name)] for name, _ in METRIC_FIELDS}
        self._put_table(rel, pa.table(cols, schema=METRIC_SCHEMA))

    def write_events(self, events: List[Dict]) -> None:
        """Append events (retries...) as one new Parquet file: the log grows by files, never by rewriting."""
        if events:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            self._put_table(f"events/part-{stamp}-{uuid.uuid4().hex[:8]}.parquet",
                            pa.Table.from_pylist(events, schema=EVENT_SCHEMA))

    def read_events(self) -> pa.Table:
        base = f"{self.root}/events"
        with self.reading("events"):
            if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
                return EVENT_SCHEMA.empty_table()
            return pads.dataset(base, filesystem=self.fs, format="parquet", schema=EVENT_SCHEMA).to_table()

    # -- reading sequences (per-sequence files and compacted ones alike) ----------------------
    def sequence_files(self, kind: str) -> Dict[Key, pafs.FileInfo]:
        """Every per-sequence ``kind`` file, by (dataset, sequence), from one recursive listing (not a
        request per sequence: a corpus run may hold millions on S3)."""
        base = f"{self.root}/{kind}"
        with self.reading(kind):
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = {}
        for info in infos:
            parts = info.path[len(base) + 1:].split("/")
            if len(parts) == 3 and parts[2] == "part-0.parquet" and parts[0].startswith("dataset=") \
                    and parts[1].startswith("sequence="):
                files[(parts[0][len("dataset="):], parts[1][len("sequence="):])] = info
        return files

    def compaction_state(self) -> Optional[dict]:
        """What ``compacted/CURRENT`` names (generation, files per table), or None before any compaction."""
        from .compact import CURRENT

        with self.reading(CURRENT):
            try:
                with self.fs.open_input_stream(f"{self.root}/{CURRENT}") as f:
                    return json.loads(f.read())
            except FileNotFoundError:
                return None

    def _read(self, kind: str, columns: Optional[Iterable[str]] = None, filter=None) -> pa.Table:
        """One table of ``kind`` over both layouts; a sequence's own files override its compacted rows."""
        columns = list(columns) if columns else None
        files = self.sequence_files(kind)
        tables = []
        with self.reading(kind):
            if files:  # discovered from the folder's listing (sizes included), hidden temporary files ignored
                schema = pa.schema((MASK_FIELDS if kind == "masks" else METRIC_FIELDS) + KEY_FIELDS)
                ds = pads.dataset(f"{self.root}/{kind}", filesystem=self.fs, format="parquet", schema=schema,
                                  partitioning=pads.partitioning(pa.schema(KEY_FIELDS), flavor="hive"))
                tables.append(ds.to_table(columns=columns, filter=filter))
            state = self.compaction_state()
            if state and state.get(kind):
                ds = pads.dataset([f"{self.root}/{f}" for f in state[kind]], filesystem=self.fs, format="parquet",
                                  schema=COMPACT_SCHEMAS[kind])
                compacted = ds.to_table(columns=sorted(set(columns) | {"dataset", "sequence"}) if columns else None,
                                        filter=filter)
                if files and compacted.num_rows:
                    overridden = pa.array([f"{d}\x00{s}" for d, s in files])
                    compacted = compacted.filter(pc.invert(pc.is_in(_keys_column(compacted), overridden)))
                if columns:
                    compacted = compacted.select(columns)
                tables.append(compacted)
        tables = [t for t in tables if t.num_rows or not tables]
        if not tables:
            return pa.table({})
        if len(tables) == 1:
            return tables[0]
        names = tables[0].column_names
        return pa.concat_tables([t.select(names).cast(tables[0].schema) if t.schema != tables[0].schema else t.select(names)
                                 for t in tables])

    def read_metrics_table(self, columns: Optional[Iterable[str]] = None) -> pa.Table:
        """The metrics as one table (all columns of the current schema unless ``columns``), sorted by sequence."""
        schema = _metric_schema(columns)
        table = self._read("metrics", columns)
        table = conform(table, schema) if table.num_rows else schema.empty_table()
        if {"dataset", "sequence"} <= set(schema.names) and table.num_rows:
            table = table.sort_by([("dataset", "ascending"), ("sequence", "ascending")])
        return table

    def read_metrics(self, columns: Optional[Iterable[str]] = None) -> List[Dict]:
        return self.read_metrics_table(columns).to_pylist()

    def completed(self, config_hash: str) -> set:
        """(dataset, sequence) pairs finished with this configuration whose masks are stored: what a
        resumed run skips. Failed rows, other configurations and metrics without masks are redone."""
        rows = self.read_metrics(columns=["dataset", "sequence", "status", "config_hash"])
        done = {(r["dataset"], r["sequence"]) for r in rows if r["status"] == "ok" and r["config_hash"] == config_hash}
        state = self.compaction_state()
        compacted_ok = set()
        if state and state.get("metrics"):  # compaction only folds in ok sequences whose masks it folds in too
            per_sequence = set(self.sequence_files("metrics"))
            compacted_ok = {k for k in done if k not in per_sequence}
        return done & (set(self.sequence_files("masks")) | compacted_ok)

    def read_masks(self, dataset: Optional[str] = None, sequence: Optional[str] = None,
                   columns: Optional[Iterable[str]] = None) -> pa.Table:
        """Masks rows (of one sequence, or all), sorted by sequence and frame; ``columns`` reads only those
        (e.g. the quality column of a corpus without its PNGs)."""
        flt = None
        if dataset is not None:
            flt = pads.field("dataset") == dataset
        if sequence is not None:
            f2 = pads.field("sequence") == sequence
            flt = f2 if flt is None else flt & f2
        table = self._read("masks", columns=columns, filter=flt)
        keys = [(c, "ascending") for c in ("dataset", "sequence", "frame") if c in table.column_names]
        return table.sort_by(keys) if table.num_rows and keys else table

    def mask_keys(self) -> List[Key]:
        """Every (dataset, sequence) with masks, sorted: read them one sequence at a time (a corpus's
        masks do not fit in memory)."""
        return sorted(set(self.sequence_files("masks")) | self._compacted_keys("masks"))

    def _compacted_keys(self, kind: str) -> set:
        state = self.compaction_state()
        if not state or not state.get(kind):
            return set()
        with self.reading(kind):
            ds = pads.dataset([f"{self.root}/{f}" for f in state[kind]], filesystem=self.fs, format="parquet",
                              schema=COMPACT_SCHEMAS[kind])
            t = ds.to_table(columns=["dataset", "sequence"])
        return set(zip(t.column("dataset").to_pylist(), t.column("sequence").to_pylist()))

    def compact(self, **kwargs):
        """Fold finished sequences into a few large files (:func:`vosbatch.io.compact.compact`)."""
        from .compact import compact

        return compact(self, **kwargs)
