"""SegTrack-v2 (Li et al., ICCV 2013) in the official layout of ``SegTrackv2.zip``.

What this reader relies on (the archive from https://web.engr.oregonstate.edu/~lif/SegTrack2/ and
the loaders that read it, e.g. tensorbay's SegTrack2 loader)::

    ROOT/JPEGImages/<seq>/<frame>.<png|bmp|jpg>   frames; the format differs between sequences
    ROOT/GroundTruth/<seq>/<frame>.<png|bmp>      one object: masks directly in the folder
    ROOT/GroundTruth/<seq>/1/<frame>.<ext>, 2/... several objects: one numbered folder each; the
                                                  extension may differ between object folders
    ROOT/ImageSets/all.txt                        sequence names, one a line, prefixed with ``*``
    ROOT/ImageSets/<seq>.txt                      first line the folder (``<seq>/``), then the
                                                  frame names without extension, in order

A mask file matches its frame by name (stem), whatever the two extensions. Masks are 0/255 grey or
colour images; any non-zero pixel is foreground. The objects of a multi-object sequence are merged
into one mask (their union): the unsupervised single-object convention. SegTrack-v2 is scored on
every frame (no first/last-frame exclusion) and has no train/val split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional

from ..errors import InputError
from ..names import is_single_component
from .sequence import GtEntry, Sequence, natural_key

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def _images_by_stem(folder: Path) -> Dict[str, Path]:
    """Image files of a folder keyed by stem (a stem present in two formats keeps the first by name)."""
    out: Dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                out.setdefault(p.stem, p)
    return out


def segtrackv2_names(root: Path) -> List[str]:
    """Sequence names from ``ImageSets/all.txt`` (``*`` prefix dropped), else the frame folders."""
    root = Path(root)
    listing = root / "ImageSets" / "all.txt"
    if listing.is_file():
        names = [line.strip().lstrip("*").strip().strip("/") for line in listing.read_text().splitlines()]
        return [n for n in names if n]
    return sorted((p.name for p in (root / "JPEGImages").iterdir() if p.is_dir()), key=natural_key)


def _frame_order(root: Path, name: str, frames: Dict[str, Path]) -> List[str]:
    """Frame stems in order: ``ImageSets/<seq>.txt`` when present, else natural order of names."""
    listing = root / "ImageSets" / f"{name}.txt"
    if listing.is_file():
        lines = [line.strip() for line in listing.read_text().splitlines()]
        stems = [Path(line).stem if Path(line).suffix.lower() in IMAGE_SUFFIXES else line for line in lines[1:] if line]
        if stems:
            return stems
    return sorted(frames, key=natural_key)


def segtrackv2_sequences(
    root: Path, sequences: Optional[Iterable[str]] = None, dataset: str = "segtrackv2"
) -> List[Sequence]:
    """Describe SegTrack-v2 sequences; unknown names yield a Sequence that fails clearly."""
    root = Path(root)
    image_root = root / "JPEGImages"
    if not image_root.is_dir():
        raise InputError(f"{image_root}: not found — expected a SegTrack-v2 root with JPEGImages/<sequence>/")
    names = list(sequences) if sequences else segtrackv2_names(root)
    out = []
    for name in names:
        if not is_single_component(name):  # a name must not reach outside the dataset's folders
            out.append(Sequence(dataset, name, [], None, missing_reason=f"{name!r}: not a sequence name of {image_root}",
                                exclude_first_last=False))
            continue
        folder = image_root / name
        if not folder.is_dir():
            out.append(Sequence(dataset, name, [], None, missing_reason=f"{folder}: unknown sequence {name!r} (no such folder)",
                                exclude_first_last=False))
            continue
        frames = _images_by_stem(folder)
        order = _frame_order(root, name, frames)
        # A frame listed in ImageSets but missing on disk keeps a path that names it when read.
        frame_paths = [frames.get(stem, folder / stem) for stem in order]
        gt_dir = root / "GroundTruth" / name
        object_dirs = sorted((p for p in gt_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
            if gt_dir.is_dir() else []
        gt: Optional[List[GtEntry]] = None
        if gt_dir.is_dir():
            per_object = [_images_by_stem(d) for d in (object_dirs or [gt_dir])]
            gt = []
            for stem in order:
                found = tuple(o[stem] for o in per_object if stem in o)
                # No object folder has this frame: the expected path, so reading it names the file.
                gt.append(found if len(found) > 1 else found[0] if found else (object_dirs or [gt_dir])[0] / f"{stem}.png")
        meta = {"folder": str(folder), "objects": max(1, len(object_dirs))}
        out.append(Sequence(dataset, name, frame_paths, gt, meta=meta, exclude_first_last=False))
    return out
