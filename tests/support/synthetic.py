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


def write_video_file(path: Path, frames: np.ndarray, fps: int = 10, codec: str | None = None, gop: int = 6) -> Path:
    """Encode (T,H,W,3) uint8 RGB frames as a video file with PyAV.

    libx264 (with B-frames) when available, else MPEG-4 part 2 (VP9 for ``.webm``); a short keyframe interval ``gop``
    so that reading a window really seeks. Frame sizes must be even (yuv420p).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec is None and path.suffix.lower() == ".webm":
        codec = "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else "libvpx"
    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "bf": "2", "keyint": str(gop), "min-keyint": str(gop),
                              "scenecut": "0"}
        else:
            stream.bit_rate = 4_000_000  # the default is far too low for a faithful fixture
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def object_parts(mask: np.ndarray, parts: int) -> list:
    """Split one object mask into ``parts`` vertical bands (disjoint, union = the mask): a
    multi-object annotation whose merged mask is known."""
    cols = np.nonzero(mask.any(axis=0))[0]
    if parts <= 1 or cols.size == 0:
        return [mask] + [np.zeros_like(mask)] * (parts - 1)
    edges = np.linspace(cols[0], cols[-1] + 1, parts + 1).round().astype(int)
    xs = np.arange(mask.shape[1])
    return [mask & ((xs >= a) & (xs < b))[None, :] for a, b in zip(edges[:-1], edges[1:])]


def write_segtrackv2_fixture(
    root: Path, videos: dict, objects: dict | None = None, image_format: dict | None = None, gt_format: dict | None = None
) -> Path:
    """Write videos in the official SegTrack-v2 layout.

    ``JPEGImages/<seq>/<seq>_<nnnnn>.<fmt>`` (``image_format[seq]``: ``.png`` default, ``.bmp``,
    ``.jpg``), ``GroundTruth/<seq>/`` with 0/255 masks directly, or, when ``objects[seq] > 1``, one
    numbered folder per object (the object split into vertical bands, see :func:`object_parts`),
    masks as 3-channel images in ``gt_format[seq]`` (``.png`` default, or ``.bmp``), and
    ``ImageSets/all.txt`` (``*<seq>`` lines) plus ``ImageSets/<seq>.txt`` (folder, then frame names).
    """
    root = Path(root)
    objects, image_format, gt_format = objects or {}, image_format or {}, gt_format or {}
    (root / "ImageSets").mkdir(parents=True, exist_ok=True)
    for name, vid in videos.items():
        img_dir = root / "JPEGImages" / name
        img_dir.mkdir(parents=True, exist_ok=True)
        n_obj = int(objects.get(name, 1))
        gt_dirs = [root / "GroundTruth" / name] if n_obj == 1 else [root / "GroundTruth" / name / str(k + 1) for k in range(n_obj)]
        for d in gt_dirs:
            d.mkdir(parents=True, exist_ok=True)
        stems = []
        for t, (f, m) in enumerate(zip(vid.frames, vid.masks)):
            stem = f"{name}_{t:05d}"
            stems.append(stem)
            cv2.imwrite(str(img_dir / f"{stem}{image_format.get(name, '.png')}"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            for d, part in zip(gt_dirs, object_parts(m, n_obj)):
                grey = part.astype(np.uint8) * 255
                cv2.imwrite(str(d / f"{stem}{gt_format.get(name, '.png')}"), cv2.merge([grey, grey, grey]))
        (root / "ImageSets" / f"{name}.txt").write_text(f"{name}/\n" + "\n".join(stems) + "\n")
    (root / "ImageSets" / "all.txt").write_text("".join(f"*{n}\n" for n in videos))
    return root


def write_fbms59_fixture(
    root: Path, videos: dict, every: int = 20, first_number: dict | None = None, pad: dict | None = None,
    label_format: dict | None = None, objects: dict | None = None, split_folder: str = "Testset",
) -> Path:
    """Write videos in the official FBMS-59 layout: ``Testset/<seq>/<seq>_<n>.jpg`` (numbering from
    ``first_number[seq]`` (default 1), zero-padded to ``pad[seq]`` digits (default 2)) and
    ``Testset/<seq>/GroundTruth/`` with ``<seq>Def.dat`` and one label file for frames 0, ``every``,
    2·``every``... (``label_format[seq]``: ``.pgm`` (background 0, objects grey 255, 128...) or
    ``.ppm`` (background white, objects red, green...), with a ``_PROB`` map beside each ``.ppm``).
    With ``objects[seq] > 1`` the object is split into that many regions (see :func:`object_parts`).
    """
    root = Path(root)
    first_number, pad = first_number or {}, pad or {}
    label_format, objects = label_format or {}, objects or {}
    for name, vid in videos.items():
        folder = root / split_folder / name
        gt_dir = folder / "GroundTruth"
        gt_dir.mkdir(parents=True, exist_ok=True)
        start, width, fmt = int(first_number.get(name, 1)), int(pad.get(name, 2)), label_format.get(name, ".pgm")
        n_obj = int(objects.get(name, 1))
        if fmt == ".ppm":
            palette = [(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)][: n_obj + 1]  # RGB
            colours = [(r << 16) | (g << 8) | b for r, g, b in palette]
        else:
            palette = [(0,) * 3] + [(v,) * 3 for v in (255, 128, 64)][:n_obj]
            colours = [p[0] for p in palette]
        entries = []
        for t, (f, m) in enumerate(zip(vid.frames, vid.masks)):
            stem = f"{name}_{start + t:0{width}d}"
            cv2.imwrite(str(folder / f"{stem}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            if t % every:
                continue
            label = np.empty(m.shape + (3,), np.uint8)
            label[:] = palette[0]
            for k, part in enumerate(object_parts(m, n_obj)):
                label[part] = palette[k + 1]
            gt_name = f"{stem}_gt{fmt}"
            if fmt == ".ppm":
                cv2.imwrite(str(gt_dir / gt_name), cv2.cvtColor(label, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(gt_dir / f"{stem}_gt_PROB.pgm"), np.full(m.shape, 255, np.uint8))
            else:
                cv2.imwrite(str(gt_dir / gt_name), label[:, :, 0])
            entries.append(f"Frame number:\n{t}\nFile name:\n{gt_name}\nInput file name:\n{stem}.ppm\n")
        regions = "".join(f"\n{c}\n" for c in colours)
        matrix = "\n".join(" ".join("0" if i == j else "1" for j in range(len(colours))) for i in range(len(colours)))
        (gt_dir / f"{name}Def.dat").write_text(
            "Ground truth definition file; do not change!\n\nTotal number of regions:\n"
            f"{len(colours)}\n{regions}\nConfusion penality matrix\n{matrix}\n\n"
            f"Total number of frames in this shot:\n{len(vid.frames)}\n"
            f"Total number of labeled frames for this shot:\n{len(entries)}\n" + "".join(entries)
        )
    return root
