"""Generic inputs for pseudo-labelling: videos, frame folders, manifests and ``s3://`` prefixes.

Each input string is one of

* a video file (``.mp4``, ``.mov``, ``.avi``, ``.mkv``, ``.webm``...; local or ``s3://``): one sequence,
  decoded window by window with PyAV;
* a folder of frames (images directly inside): one sequence, frames in natural name order;
* a folder of videos and/or frame folders (one level down): one sequence each;
* a manifest ``.csv`` / ``.parquet`` (local or ``s3://``) with a ``path`` column (a video or frame
  folder, local or ``s3://``; relative paths are relative to the manifest's folder) and optional
  ``name`` and ``gt`` (a folder of masks named like the frames, e.g. ``00000.png`` for a video);
* an ``s3://bucket/prefix``: every video object under it, and every "folder" of frame objects
  under it, becomes a sequence.

Sequence names must be usable as Hive partition values and unique within a run: they are made safe
where a Sequence is made (:mod:`vosbatch.names`), and repeated names (ignoring case) get ``-2``,
``-3``... in input order. An entry that does not exist or is not a video/frame folder still yields a
Sequence, whose ``missing_reason`` makes it a clear ``failed`` row; so does a manifest or prefix
that cannot be read at all (one bad input never stops the others).
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional

from ..errors import InputError
from ..io.fs import filesystem_for, is_s3
from ..names import unique_names
from .sequence import Location, Sequence, natural_key
from .video import VIDEO_SUFFIXES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
DEFAULT_DATASET = "inputs"


def _suffix(location: str) -> str:
    return PurePosixPath(location.rstrip("/")).suffix.lower()


def _basename(location: str) -> str:
    return PurePosixPath(location.rstrip("/")).name


def input_sequences(inputs: List[str], dataset: str = DEFAULT_DATASET) -> List[Sequence]:
    """Describe the sequences of generic inputs (see the module docstring) without reading pixels."""
    seqs: List[Sequence] = []
    for item in inputs:
        item = str(item)
        seqs += _listed(item, dataset, lambda: _manifest(item, dataset) if _suffix(item) in MANIFEST_SUFFIXES
                        else _entry(item, dataset))
    for seq, name in zip(seqs, unique_names([s.name for s in seqs])):
        seq.name = name
    return seqs


# -- one entry: a video, a frame folder, a folder of those, or an s3 prefix ----------------------

def _entry(location: str, dataset: str, name: Optional[str] = None, gt: Optional[str] = None) -> List[Sequence]:
    if is_s3(location):
        return _s3_entry(location, dataset, name, gt)
    path = Path(location).expanduser()
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return [_with_gt(Sequence(dataset, name or path.stem, [], video=str(path), meta={"source": str(path)}), gt)]
        return [_missing(dataset, name or path.stem, f"{path}: not a video file (known: {', '.join(VIDEO_SUFFIXES)}) "
                                                     "nor a .csv/.parquet manifest")]
    if not path.is_dir():
        return [_missing(dataset, name or path.stem or str(path), f"{path}: no such file or folder")]
    count = _local_image_count(path)
    if count or name is not None:
        return [_with_gt(_folder_sequence(dataset, name or path.name, str(path), count), gt)]
    children = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    out = [Sequence(dataset, p.stem, [], video=str(p), meta={"source": str(p)})
           for p in children if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    for sub in children:
        if sub.is_dir():
            sub_count = _local_image_count(sub)
            if sub_count:
                out.append(_folder_sequence(dataset, sub.name, str(sub), sub_count))
    # Nothing usable: a frame folder with 0 frames, which fails with "at least 2 are needed".
    return out or [Sequence(dataset, path.name, [], meta={"folder": str(path)})]


def _folder_sequence(dataset: str, name: str, folder: str, count: int) -> Sequence:
    """A folder of frames described by its count: the worker lists it (:func:`list_frames`)."""
    return Sequence(dataset, name, [], frames_folder=folder, meta={"folder": folder, "num_frames": count})


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _local_image_count(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.is_file() and _is_image(e.name))


def list_frames(folder: str) -> List[Location]:
    """The images directly in a folder (local or ``s3://``), in natural name order."""
    if is_s3(folder):
        frames = [o for o in _s3_list(folder, recursive=False) if _is_image(o)]
        return sorted(frames, key=lambda o: natural_key(_basename(o)))
    return sorted((p for p in Path(folder).iterdir() if p.is_file() and _is_image(p.name)), key=lambda p: natural_key(p.name))


def _missing(dataset: str, name: str, reason: str) -> Sequence:
    return Sequence(dataset, name, [], None, missing_reason=reason)


def _s3_list(uri: str, recursive: bool = True) -> List[str]:
    """Every object URI under an s3:// prefix (recursive, or directly under it); [] when there is none."""
    import pyarrow.fs as pafs

    fs, path = filesystem_for(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as e:
        raise InputError(f"{uri}: cannot list ({e})") from e
    return sorted(f"s3://{i.path}" for i in infos if i.type == pafs.FileType.File)


def _s3_entry(uri: str, dataset: str, name: Optional[str], gt: Optional[str]) -> List[Sequence]:
    uri = uri.rstrip("/")
    if _suffix(uri) in VIDEO_SUFFIXES:
        return [_with_gt(Sequence(dataset, name or PurePosixPath(uri).stem, [], video=uri, meta={"source": uri}), gt)]
    objects = _s3_list(uri)
    if not objects:
        if name is not None:
            return [_missing(dataset, name, f"{uri}: no such object or prefix")]
        raise InputError(f"{uri}: no objects under this prefix")
    videos = [o for o in objects if _suffix(o) in VIDEO_SUFFIXES]
    folders: Dict[str, int] = {}  # frame count per folder: the worker lists its own folder
    for o in objects:
        if _suffix(o) in IMAGE_SUFFIXES:
            folder = posixpath.dirname(o)
            folders[folder] = folders.get(folder, 0) + 1
    del objects
    if name is not None:  # a manifest row: exactly one sequence, the frames directly under it
        if folders.get(uri):
            return [_with_gt(_folder_sequence(dataset, name, uri, folders[uri]), gt)]
        if len(videos) == 1:
            return [_with_gt(Sequence(dataset, name, [], video=videos[0], meta={"source": videos[0]}), gt)]
        return [_missing(dataset, name, f"{uri}: no frames directly under this prefix")]
    out = [Sequence(dataset, PurePosixPath(v).stem, [], video=v, meta={"source": v}) for v in videos]
    for folder in sorted(folders, key=natural_key):
        out.append(_folder_sequence(dataset, _basename(folder), folder, folders[folder]))
    if not out:
        raise InputError(f"{uri}: no videos or frame images under this prefix")
    return out


def _with_gt(seq: Sequence, gt: Optional[str]) -> Sequence:
    """Attach a GT folder: one mask per frame, matched by frame name (any image format);
    frames without a mask have no annotation (None)."""
    if not gt:
        return seq
    masks = _mask_files(gt)
    if masks is None:
        seq.missing_reason = f"{gt}: ground-truth folder not found"
        return seq
    names = seq.frame_names  # for a video this reads its metadata once (cached in meta)
    if seq.video is not None and "video_error" in seq.meta:
        return seq  # check() reports the video's problem
    if not any(n in masks for n in names):
        seq.missing_reason = f"{gt}: no mask named like the frames ({names[0] if names else '-'}.png ...)"
        return seq
    seq.gt_paths = [masks.get(n) for n in names]
    seq.meta["gt_folder"] = gt
    missing = [n for n in names if n not in masks]
    if missing:  # the row says so (warning, gt_frames): a folder may annotate some frames only
        seq.meta.update(gt_missing=missing[:5], gt_missing_count=len(missing))
    return seq


def _mask_files(folder: str) -> Optional[Dict[str, Location]]:
    """Mask files of a local or s3:// folder keyed by stem; None when the folder does not exist."""
    if is_s3(folder):
        objects = [o for o in _s3_list(folder) if posixpath.dirname(o) == folder.rstrip("/")]
        return {PurePosixPath(o).stem: o for o in sorted(objects) if _suffix(o) in IMAGE_SUFFIXES} or None
    path = Path(folder).expanduser()
    if not path.is_dir():
        return None
    return {p.stem: p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


# -- manifests -----------------------------------------------------------------------------------

def _read_manifest(location: str) -> List[Dict[str, Optional[str]]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = filesystem_for(location)
    try:
        if _suffix(location) == ".csv":
            with fs.open_input_stream(path) as fh:
                # every column as text: names like 0001 must not turn into numbers
                table = pacsv.read_csv(fh, convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in ("path", "name", "gt")}))
        else:
            table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError as e:
        raise InputError(f"{location}: manifest not found") from e
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{location}: cannot read manifest ({e})") from e
    if "path" not in table.column_names:
        raise InputError(f"{location}: manifest has no 'path' column (columns: {', '.join(table.column_names)})")
    rows = table.select([c for c in ("path", "name", "gt") if c in table.column_names]).to_pylist()
    return [{k: (None if v is None or str(v).strip() == "" else str(v).strip()) for k, v in r.items()} for r in rows]


def _resolve(entry: str, base: str) -> str:
    """A manifest path: absolute and s3:// ones as they are, relative ones against the manifest's folder."""
    if is_s3(entry) or Path(entry).expanduser().is_absolute():
        return entry if is_s3(entry) else str(Path(entry).expanduser())
    if is_s3(base):
        return posixpath.normpath(f"{base}/{entry}").replace("s3:/", "s3://", 1)
    return str(Path(base) / entry)


def _manifest(location: str, dataset: str) -> List[Sequence]:
    base = location.rsplit("/", 1)[0] if is_s3(location) else str(Path(location).expanduser().resolve().parent)
    out: List[Sequence] = []
    for i, row in enumerate(_read_manifest(location)):
        if not row.get("path"):
            out.append(_missing(dataset, row.get("name") or f"row{i + 1}", f"{location}: row {i + 1} has an empty path"))
            continue
        path = _resolve(row["path"], base)
        gt = _resolve(row["gt"], base) if row.get("gt") else None
        name = row.get("name") or (PurePosixPath(path.rstrip("/")).stem if _suffix(path) in VIDEO_SUFFIXES else _basename(path))
        out += _listed(path, dataset, lambda: _entry(path, dataset, name=name, gt=gt), name)
    return out


def _listed(location: str, dataset: str, describe, name: Optional[str] = None) -> List[Sequence]:
    """``describe()``, or one failed sequence carrying its error when the input cannot be listed."""
    try:
        return describe()
    except InputError as e:
        return [_missing(dataset, name or _basename(location.rstrip("/")) or location, str(e))]


