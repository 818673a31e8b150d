"""Compaction of a run: many small per-sequence Parquet files -> a few large ones.

Workers write each sequence's masks and metrics as their own files (``masks/dataset=D/sequence=S/part-0.parquet``):
a sequence's results appear or are replaced atomically, and a resumed run knows what is done. A corpus of
100,000 clips then leaves 200,000 small files in 100,000 Hive partitions, which every Parquet reader
lists and opens one by one. Compaction rewrites the finished sequences into ``compacted/``: a few files
per table, rows sorted by (dataset, sequence), row groups of about ``row_group_bytes``, with ``dataset``
and ``sequence`` as columns.

It is a commit protocol, so it can be interrupted at any point and run again:

1. snapshot the per-sequence files (path, size, modification time);
2. write generation g+1 under ``compacted/``: the current generation's rows, minus every sequence the
   snapshot has newer files for, plus the snapshot's sequences;
3. commit by replacing ``compacted/CURRENT`` (one small JSON object, written whole); readers only read
   the files it names, so until then they see generation g and the per-sequence files;
4. delete the files of generation g, and each snapshot file that is still as it was (a sequence that a
   running job rewrote meanwhile keeps its newer file, which readers prefer to the compacted rows).

A sequence whose metrics are not written yet (masks only: still running) is left alone.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

Key = Tuple[str, str]  # (dataset, sequence)

CURRENT = "compacted/CURRENT"


@dataclass
class CompactionResult:
    generation: int
    sequences: int  # sequences in the compacted tables after this run
    added: int  # per-sequence results folded in by this run
    files: Dict[str, List[str]] = field(default_factory=dict)
    deleted: int = 0  # per-sequence files removed
    kept: int = 0  # per-sequence files left because they changed during compaction


class _Writer:
    """Appends tables to numbered Parquet files: one row group per ~``row_group_bytes``, a new file
    after ~``file_bytes``."""

    def __init__(self, store, prefix: str, schema: pa.Schema, row_group_bytes: int, file_bytes: int) -> None:
        self.store, self.prefix, self.schema = store, prefix, schema
        self.row_group_bytes, self.file_bytes = row_group_bytes, file_bytes
        self.files: List[str] = []
        self._buffer: List[pa.Table] = []
        self._buffered = 0
        self._writer = self._stream = None
        self._file_written = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buffer.append(table.select(self.schema.names).cast(self.schema))
            self._buffered += table.nbytes
            self.rows += table.num_rows
            if self._buffered >= self.row_group_bytes:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            rel = f"{self.prefix}-{len(self.files):05d}.parquet"
            path = f"{self.store.root}/{rel}"
            self.store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)  # local disk; nothing on S3
            self._stream = self.store.fs.open_output_stream(path)
            self._writer = pq.ParquetWriter(self._stream, self.schema, compression="zstd")
            self.files.append(rel)
            self._file_written = 0
        table = pa.concat_tables(self._buffer)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._file_written += self._buffered
        self._buffer, self._buffered = [], 0
        if self._file_written >= self.file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = self._stream = None

    def close(self) -> List[str]:
        self._flush()
        self._close_file()
        return self.files


def _per_sequence_table(store, kind: str, files: Dict[Key, object], keys: List[Key]) -> Iterator[pa.Table]:
    """The per-sequence files of ``keys``, in order, each with its dataset and sequence as columns."""
    for dataset, sequence in keys:
        info = files[(dataset, sequence)]
        with store.reading(f"{kind}/dataset={dataset}/sequence={sequence}"):
            table = pq.read_table(info.path, filesystem=store.fs)
        n = table.num_rows
        yield table.append_column("dataset", pa.array([dataset] * n, pa.string())) \
                   .append_column("sequence", pa.array([sequence] * n, pa.string()))


def _compacted_batches(store, kind: str, state: Optional[dict], drop: set) -> Iterator[pa.Table]:
    """The current generation's rows of ``kind``, row group by row group, minus the sequences in ``drop``."""
    import pyarrow.compute as pc

    from .store import _keys_column

    dropped = pa.array([f"{d}\x00{s}" for d, s in drop], pa.string())
    for rel in (state or {}).get(kind, []):
        with store.reading(rel):
            f = pq.ParquetFile(store.fs.open_input_file(f"{store.root}/{rel}"))
            for i in range(f.num_row_groups):
                table = f.read_row_group(i)
                if len(dropped):
                    table = table.filter(pc.invert(pc.is_in(_keys_column(table), dropped)))
                yield table


def _remove_uncommitted(store, state: Optional[dict]) -> None:
    """Delete generation folders CURRENT does not name: what an interrupted compaction left."""
    committed = {rel.split("/")[1] for kind in ("metrics", "masks") for rel in (state or {}).get(kind, [])}
    with store.reading("compacted"):
        infos = store.fs.get_file_info(pafs.FileSelector(f"{store.root}/compacted", allow_not_found=True))
    for info in infos:
        name = info.path.rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("g") and name not in committed:
            store.fs.delete_dir(info.path)


def compact(store, row_group_bytes: int = 128 << 20, file_bytes: int = 1 << 30) -> CompactionResult:
    """Fold every finished sequence's own files into the next generation of ``compacted/`` (see the module
    docstring); returns what it did. Running it again with nothing new to fold in does nothing."""
    from .store import COMPACT_SCHEMAS, conform

    state = store.compaction_state()
    metric_files, mask_files = store.sequence_files("metrics"), store.sequence_files("masks")
    generation = (state or {}).get("generation", 0)
    if not metric_files:
        return CompactionResult(generation, (state or {}).get("sequences", 0), 0, dict(state or {}))
    rows = {}
    for table in _per_sequence_table(store, "metrics", metric_files, sorted(metric_files)):
        for row in table.to_pylist():
            rows[(row["dataset"], row["sequence"])] = row
    # an ok row always has its masks; one whose masks file is missing is being rewritten: leave it alone
    keys = sorted(k for k, r in rows.items() if r.get("status") != "ok" or k in mask_files)
    generation += 1
    prefix = f"compacted/g{generation:06d}"
    _remove_uncommitted(store, state)
    files: Dict[str, List[str]] = {}
    writer = _Writer(store, f"{prefix}/metrics", COMPACT_SCHEMAS["metrics"], row_group_bytes, file_bytes)
    for table in _compacted_batches(store, "metrics", state, set(keys)):
        writer.add(table)
    writer.add(conform(pa.Table.from_pylist([rows[k] for k in keys]), COMPACT_SCHEMAS["metrics"]))
    files["metrics"] = writer.close()
    writer_rows = writer.rows
    writer = _Writer(store, f"{prefix}/masks", COMPACT_SCHEMAS["masks"], row_group_bytes, file_bytes)
    for table in _compacted_batches(store, "masks", state, set(keys)):
        writer.add(table)
    for table in _per_sequence_table(store, "masks", mask_files, [k for k in keys if k in mask_files]):
        writer.add(conform(table, COMPACT_SCHEMAS["masks"]))
    files["masks"] = writer.close()
    sequences = writer_rows
    current = {"generation": generation, "sequences": sequences,
               "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **files}
    store._put_bytes(CURRENT, json.dumps(current, indent=1).encode())  # the commit point
    for rel in [f for kind in ("metrics", "masks") for f in (state or {}).get(kind, [])]:
        store.delete(rel)
    deleted = kept = 0
    for key in keys:
        for kind, snapshot in (("metrics", metric_files), ("masks", mask_files)):
            info = snapshot.get(key)
            if info is None:
                continue
            with store.reading(kind):
                now = store.fs.get_file_info(info.path)
            if now.type == pafs.FileType.NotFound:
                continue
            if now.size == info.size and now.mtime == info.mtime:
                store.fs.delete_file(info.path)
                deleted += 1
            else:
                kept += 1  # rewritten while this ran: its newer file wins over the compacted rows
    if store.is_local:  # the partitions' folders, now empty
        _remove_empty_folders(f"{store.root}/metrics")
        _remove_empty_folders(f"{store.root}/masks")
    return CompactionResult(generation, sequences, len(keys), files, deleted, kept)


def _remove_empty_folders(top: str) -> None:
    import os

    for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)
        except OSError:  # not empty (a sequence written meanwhile), or gone
            pass
