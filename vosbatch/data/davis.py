"""DAVIS (2016 / 2017 single-object) in the official layout.

ROOT/JPEGImages/480p/<seq>/00000.jpg, ROOT/Annotations/480p/<seq>/00000.png,
ROOT/ImageSets/480p/{train,val}.txt (lines ``/JPEGImages/480p/<seq>/00000.jpg /Annotations/...``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from ..errors import InputError
from ..names import is_single_component
from .sequence import Sequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def split_names(root: Path, split: str, resolution: str = "480p") -> List[str]:
    """Sequence names of a split in file order (``all`` = train then val, or every folder)."""
    root = Path(root)
    if split == "all":
        names: List[str] = []
        for s in ("train", "val"):
            if (root / "ImageSets" / resolution / f"{s}.txt").is_file():
                names += [n for n in split_names(root, s, resolution) if n not in names]
        if not names:
            names = sorted(p.name for p in (root / "JPEGImages" / resolution).iterdir() if p.is_dir())
        return names
    listing = root / "ImageSets" / resolution / f"{split}.txt"
    if not listing.is_file():
        raise InputError(f"{listing}: split file not found (is {root} a DAVIS root?)")
    names = []
    for line in listing.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split()[0].strip("/").split("/")
        name = parts[2] if len(parts) >= 3 and parts[0] == "JPEGImages" else parts[0]
        if name not in names:
            names.append(name)
    return names


def davis_sequences(
    root: Path,
    split: str = "val",
    sequences: Optional[Iterable[str]] = None,
    resolution: str = "480p",
    dataset: str = "davis2016",
) -> List[Sequence]:
    """Describe the sequences to process. Unknown names still yield a Sequence that fails clearly."""
    root = Path(root)
    image_root = root / "JPEGImages" / resolution
    if not image_root.is_dir():
        raise InputError(f"{image_root}: not found — expected a DAVIS root with JPEGImages/{resolution}/<sequence>/")
    names = list(sequences) if sequences else split_names(root, split, resolution)
    out = []
    for name in names:
        if not is_single_component(name):  # a name must not reach outside the dataset's folders
            out.append(Sequence(dataset, name, [], None, missing_reason=f"{name!r}: not a sequence name of {image_root}"))
            continue
        folder = image_root / name
        if not folder.is_dir():
            out.append(Sequence(dataset, name, [], None, missing_reason=f"{folder}: unknown sequence {name!r} (no such folder)"))
            continue
        frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        gt_dir = root / "Annotations" / resolution / name
        gt = None
        if gt_dir.is_dir():
            gt = [gt_dir / (p.stem + ".png") for p in frames]
        out.append(Sequence(dataset, name, frames, gt, meta={"folder": str(folder)}))
    return out


def frame_folder_sequence(folder: Path, dataset: str = "frames", gt_folder: Optional[Path] = None) -> Sequence:
    """Any folder of frames (sorted by name) as one sequence, with an optional GT folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return Sequence(dataset, folder.name, [], None, missing_reason=f"{folder}: not a folder of frames")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    gt = [Path(gt_folder) / (p.stem + ".png") for p in frames] if gt_folder else None
    return Sequence(dataset, folder.name, frames, gt, meta={"folder": str(folder)})
