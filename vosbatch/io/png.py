"""Lossless PNG encoding of binary masks (what the ``mask_png`` column holds)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError


def encode_mask(mask: np.ndarray) -> bytes:
    """0/1 mask -> PNG bytes (8-bit, values 0 and 1: lossless and compact)."""
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    """PNG bytes -> bool mask."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("not a PNG mask")
    return img > 0


def write_davis_png(mask: np.ndarray, path: Path) -> None:
    """Write a DAVIS-layout 0/255 PNG atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:  # pragma: no cover
        raise ValueError(f"{path}: PNG encoding failed")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)


def read_png_folder(folder: Path) -> dict:
    """{frame_name: bool mask} for every PNG in a DAVIS-layout folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: prediction folder not found")
    out = {}
    for p in sorted(folder.glob("*.png")):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f"{p}: cannot read mask")
        out[p.stem] = (img.max(axis=2) if img.ndim == 3 else img) > 0
    return out
