"""FBMS-59 (Ochs, Malik & Brox, TPAMI 2014) in the official layout of ``FBMS_Testset.zip``.

What this reader relies on (the archive from lmb.informatik.uni-freiburg.de, the definition-file
readers of the benchmark's users, e.g. achalddave/segment-any-moving's ``utils/fbms.py``)::

    ROOT/Testset/<seq>/<seq>_<n>.jpg               frames; numbering may start at 0, 1 or later and
                                                   need not be zero-padded (sorted by number here)
    ROOT/Testset/<seq>/GroundTruth/<seq>Def.dat    the definition file
    ROOT/Testset/<seq>/GroundTruth/<...>_gt.pgm    one label image per annotated frame (about every
                                    or .ppm        20th); ``.ppm`` files come with ``..._PROB`` maps
                                                   that are not labels and are ignored
    (ROOT/Trainingset/... the same for the training set)

The definition file lists the region colours (grey values for ``.pgm``, ``R*65536+G*256+B`` for
``.ppm``) and, per annotated frame, its *frame number* (0-based index in the shot, what the
official evaluation aligns on), the label file and the input image it annotates. Region 0 is the
background (0 in ``.pgm``, white in ``.ppm``); colours not listed count as background, as in the
official C++ evaluation. All other regions are merged into one foreground mask: the unsupervised
single-object convention. Only annotated frames are scored, every one of them (no first/last-frame
exclusion); frames without annotation have ``None`` ground truth.

Label files are aligned with the frames whose names match the definition's input file names
(``cars1_01.ppm`` -> ``cars1_01.jpg``); only when no input file name matches any frame (renamed
frames) with the frames at the definition's frame numbers. An annotated frame missing from the
folder makes the sequence fail with a message naming it, rather than shifting the annotations. Without a definition file, ``*_gt.pgm|ppm`` files are matched to frames
by name and everything but the background colour is foreground.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import InputError
from .sequence import Sequence, natural_key

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")
SPLIT_FOLDERS = {"test": ("Testset",), "val": ("Testset",), "train": ("Trainingset",), "all": ("Trainingset", "Testset")}
PGM_BACKGROUND = 0
PPM_BACKGROUND = 0xFFFFFF


@dataclass
class FbmsDefinition:
    """The parts of a ``<seq>Def.dat`` file the evaluation needs."""

    region_colours: List[int]  # region 0 is the background
    total_frames: Optional[int]
    labelled: List[Tuple[int, str, str]] = field(default_factory=list)  # (frame number, label file, input file)


def parse_definition(path: Path) -> FbmsDefinition:
    """Parse a definition file; both variants in the wild are accepted (region colours on their own
    lines after blank lines, or after ``Scale of region k:`` lines)."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError as e:
        raise InputError(f"{path}: cannot read FBMS definition file ({e})") from e

    def after(label: str, start: int = 0) -> int:
        for i in range(start, len(lines)):
            if lines[i].lower().startswith(label.lower()):
                return i + 1
        raise InputError(f"{path}: not an FBMS definition file (no line {label!r})")

    try:
        i = after("Total number of regions")
        count = int(lines[i])
        colours: List[int] = []
        j = i + 1
        while len(colours) < count and j < len(lines):
            if re.fullmatch(r"\d+", lines[j]):
                colours.append(int(lines[j]))
            elif lines[j] and not lines[j].lower().startswith("scale of region"):
                break
            j += 1
        if len(colours) != count:
            raise InputError(f"{path}: {count} regions announced, {len(colours)} colours found")
        total = int(lines[after("Total number of frames")])
        labelled = []
        k = after("Total number of labeled frames")
        while True:
            try:
                k = after("Frame number:", k)
            except InputError:
                break
            number = int(lines[k])
            label_file = lines[after("File name:", k)]
            m = after("Input file name:", k)
            labelled.append((number, label_file, lines[m] if m < len(lines) else ""))
            k = m
    except (ValueError, IndexError) as e:
        raise InputError(f"{path}: malformed FBMS definition file ({e})") from e
    return FbmsDefinition(colours, total, labelled)


def fbms_names(set_dir: Path) -> List[str]:
    return sorted((p.name for p in set_dir.iterdir() if p.is_dir()), key=natural_key)


def _set_dirs(root: Path, split: str) -> List[Path]:
    """The set folders a split reads; a root that is itself a set folder is read as is."""
    folders = SPLIT_FOLDERS.get(split)
    if folders is None:
        raise InputError(f"FBMS-59: unknown split {split!r} (use one of {', '.join(SPLIT_FOLDERS)})")
    dirs = [root / f for f in folders if (root / f).is_dir()]
    if dirs:
        return dirs
    if root.is_dir() and any((p / "GroundTruth").is_dir() for p in root.iterdir() if p.is_dir()):
        return [root]
    raise InputError(f"{root / folders[-1]}: not found — expected an FBMS-59 root with Testset/<sequence>/")


def fbms_sequences(
    root: Path, split: str = "test", sequences: Optional[Iterable[str]] = None, dataset: str = "fbms59"
) -> List[Sequence]:
    """Describe FBMS-59 sequences. ``split``: ``test`` (the 30 test sequences unsupervised VOS is
    scored on; ``val`` means the same, FBMS-59 has no validation set), ``train`` or ``all``.
    Unknown names yield a Sequence that fails clearly."""
    root = Path(root)
    set_dirs = _set_dirs(root, split)
    by_name: Dict[str, Path] = {}
    for d in set_dirs:
        for n in fbms_names(d):
            by_name.setdefault(n, d / n)
    names = list(sequences) if sequences else list(by_name)
    out = []
    for name in names:
        folder = by_name.get(name)
        if folder is None:
            where = " or ".join(str(d / name) for d in set_dirs)
            out.append(Sequence(dataset, name, [], None, missing_reason=f"{where}: unknown sequence {name!r} (no such folder)",
                                exclude_first_last=False))
            continue
        out.append(_sequence(folder, dataset))
    return out


def _sequence(folder: Path, dataset: str) -> Sequence:
    name = folder.name
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    jpgs = [p for p in files if p.suffix.lower() in (".jpg", ".jpeg")]
    frames = sorted(jpgs or files, key=lambda p: natural_key(p.name))
    meta = {"folder": str(folder), "gt_format": "fbms"}
    seq = Sequence(dataset, name, frames, None, meta=meta, exclude_first_last=False)
    gt_dir = folder / "GroundTruth"
    if not gt_dir.is_dir():
        seq.meta.pop("gt_format")
        return seq
    definitions = sorted(gt_dir.glob("*.dat"), key=lambda p: (p.name != f"{name}Def.dat", p.name))
    index_of = {p.stem: i for i, p in enumerate(frames)}
    gt: List[Optional[Path]] = [None] * len(frames)
    if definitions:
        try:
            definition = parse_definition(definitions[0])
        except InputError as e:
            seq.missing_reason = str(e)
            return seq
        if not definition.region_colours:
            seq.missing_reason = f"{definitions[0]}: no regions defined"
            return seq
        seq.meta.update(fbms_background=definition.region_colours[0], fbms_objects=definition.region_colours[1:])
        by_name = any(Path(inp).stem in index_of for _, _, inp in definition.labelled)
        for number, label_file, input_file in definition.labelled:
            if by_name and Path(input_file).stem not in index_of:
                seq.missing_reason = (f"{definitions[0]}: {label_file} annotates {input_file}, but {folder} has "
                                      f"no frame {Path(input_file).stem}")
                return seq
            t = index_of[Path(input_file).stem] if by_name else number
            if not 0 <= t < len(frames):
                seq.missing_reason = (f"{definitions[0]}: annotated frame number {number} ({label_file}) is outside "
                                      f"the {len(frames)} frames in {folder}")
                return seq
            gt[t] = gt_dir / label_file
    else:
        labels = sorted(p for p in gt_dir.iterdir() if p.suffix.lower() in (".pgm", ".ppm") and p.stem.endswith("_gt"))
        if not labels:
            seq.meta.pop("gt_format")
            return seq
        seq.meta["fbms_background"] = PPM_BACKGROUND if labels[0].suffix.lower() == ".ppm" else PGM_BACKGROUND
        for p in labels:
            t = index_of.get(p.stem[: -len("_gt")])
            if t is None:
                seq.missing_reason = f"{p}: no frame named {p.stem[:-3]} in {folder} (and no definition file)"
                return seq
            gt[t] = p
    seq.gt_paths = gt
    return seq
