"""Synthetic videos with a known object, known masks and known flow.

A textured object (an ellipse) translates over a textured background that itself translates
(camera pan). Both motions are integer-free sub-pixel shifts, so flow is known exactly:
background pixels move by ``bg_velocity`` per frame, object pixels by ``obj_velocity``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np


@dataclass
class SyntheticVideo:
    frames: np.ndarray  # (T,H,W,3) uint8 RGB
    masks: np.ndarray  # (T,H,W) bool
    forward: np.ndarray  # (T-1,H,W,2) true flow t->t+1
    backward: np.ndarray  # (T-1,H,W,2) true flow t+1->t


def texture(height: int, width: int, rng: np.random.Generator, scale: float = 4.0, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Smooth random colour texture (float32 0..255): rich enough for optical flow to lock on."""
    noise = rng.random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), scale)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min() + 1e-6)
    fine = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 1.0)
    img = 0.7 * smooth + 0.3 * fine
    return np.clip(img * 255 * np.asarray(tint, np.float32), 0, 255)


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def make_video(
    frames: int = 8,
    size: Tuple[int, int] = (96, 128),
    obj_size: Tuple[int, int] = (22, 30),
    obj_velocity: Tuple[float, float] = (3.0, 1.0),
    bg_velocity: Tuple[float, float] = (-1.0, 0.5),
    start: Tuple[float, float] | None = None,
    seed: int = 0,
) -> SyntheticVideo:
    """Render the video; ``obj_size`` are the ellipse semi-axes (ry, rx), ``start`` its centre (y, x)."""
    rng = np.random.default_rng(seed)
    h, w = size
    bg = texture(h, w, rng, 6.0, (0.6, 0.9, 0.7))
    fg = texture(h, w, rng, 2.0, (1.0, 0.6, 0.5))
    cy, cx = start if start is not None else (h * 0.45, w * 0.3)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out_frames, out_masks = [], []
    for t in range(frames):
        bgt = _shift(bg, bg_velocity[0] * t, bg_velocity[1] * t)
        fgt = _shift(fg, obj_velocity[0] * t, obj_velocity[1] * t)
        oy, ox = cy + obj_velocity[1] * t, cx + obj_velocity[0] * t
        inside = ((ys - oy) / obj_size[0]) ** 2 + ((xs - ox) / obj_size[1]) ** 2 <= 1.0
        img = np.where(inside[..., None], fgt, bgt)
        out_frames.append(np.clip(img, 0, 255).astype(np.uint8))
        out_masks.append(inside)
    masks = np.stack(out_masks)
    vb = np.asarray(bg_velocity, np.float32)
    vo = np.asarray(obj_velocity, np.float32)
    fwd = np.where(masks[:-1, ..., None], vo, vb).astype(np.float32)  # a pixel moves with what covers it at t
    bwd = np.where(masks[1:, ..., None], -vo, -vb).astype(np.float32)
    return SyntheticVideo(np.stack(out_frames), masks, fwd, bwd)


def write_davis_fixture(root: Path, videos: dict, split: str = "val", resolution: str = "480p") -> Path:
    """Write videos in the official DAVIS layout: JPEGImages, Annotations (0/255 PNG), ImageSets."""
    root = Path(root)
    lines = []
    for name, vid in videos.items():
        img_dir = root / "JPEGImages" / resolution / name
        ann_dir = root / "Annotations" / resolution / name
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for t, (f, m) in enumerate(zip(vid.frames, vid.masks)):
            cv2.imwrite(str(img_dir / f"{t:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(ann_dir / f"{t:05d}.png"), m.astype(np.uint8) * 255)
            lines.append(f"/JPEGImages/{resolution}/{name}/{t:05d}.jpg /Annotations/{resolution}/{name}/{t:05d}.png")
    sets = root / "ImageSets" / resolution
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root
