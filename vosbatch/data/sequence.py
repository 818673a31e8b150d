"""A video sequence: ordered frames on disk plus optional ground truth.

Sequences are cheap descriptions (paths only) so the driver can list and shard millions of them;
pixels are read by the worker that processes the sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..errors import InputError


@dataclass
class Sequence:
    dataset: str
    name: str
    frame_paths: List[Path]
    gt_paths: Optional[List[Path]] = None
    missing_reason: Optional[str] = None  # set when the sequence could not even be listed
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def frame_names(self) -> List[str]:
        return [p.stem for p in self.frame_paths]

    def check(self) -> None:
        """Raise :class:`InputError` for problems visible without reading pixels."""
        if self.missing_reason:
            raise InputError(self.missing_reason)
        if self.num_frames < 2:
            where = self.frame_paths[0].parent if self.frame_paths else self.meta.get("folder", self.name)
            raise InputError(
                f"sequence {self.name!r} has {self.num_frames} frame(s) in {where}: at least 2 are needed for optical flow"
            )
        if self.gt_paths is not None and len(self.gt_paths) != self.num_frames:
            raise InputError(
                f"sequence {self.name!r}: {len(self.gt_paths)} ground-truth masks for {self.num_frames} frames"
            )

    def load_frames(self) -> np.ndarray:
        """All frames as uint8 RGB (T,H,W,3); every frame must decode and share one size."""
        self.check()
        frames = [read_rgb(p) for p in self.frame_paths]
        h, w = frames[0].shape[:2]
        for p, f in zip(self.frame_paths, frames):
            if f.shape[:2] != (h, w):
                raise InputError(f"{p}: frame size {f.shape[1]}x{f.shape[0]} differs from the first frame's {w}x{h}")
        return np.stack(frames)

    def load_gt(self, size: Tuple[int, int]) -> Optional[List[np.ndarray]]:
        """Binary GT masks (bool), each checked against the frame size (H, W); None when absent."""
        if self.gt_paths is None:
            return None
        masks = []
        for p in self.gt_paths:
            m = read_mask(p)
            if m.shape != tuple(size):
                raise InputError(
                    f"{p}: ground-truth size {m.shape[1]}x{m.shape[0]} differs from the frame size {size[1]}x{size[0]}"
                )
            masks.append(m)
        return masks


def read_rgb(path: Path) -> np.ndarray:
    """Read one image as RGB uint8, raising :class:`InputError` naming the file if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: frame file does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise InputError(f"{path}: cannot decode image (corrupt or not an image, {data.size} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask image as bool: any non-zero pixel is foreground (DAVIS 2016 GT is 0/255)."""
    path = Path(path)
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InputError(f"{path}: cannot read mask (missing, corrupt or not an image)")
    if img.ndim == 3:
        img = img.max(axis=2)
    return img > 0
