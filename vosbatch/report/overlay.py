"""Masks drawn over frames, and short videos of them that a browser plays.

Everything is vectorised over whole frame stacks (numpy slicing, no per-pixel loops); the only
per-frame loops are OpenCV text labels and the encoder's own frame feed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import cv2
import numpy as np

PRED_COLOUR = (255, 96, 0)  # orange fill + outline: the prediction
GT_COLOUR = (0, 230, 80)  # green outline: the ground truth
WORST_COLOUR = (230, 0, 40)  # red border: the frames with the lowest J

# format -> (container, codec, pixel format, file suffix, MIME type). H.264 MP4 plays in every
# Chromium/Chrome/Firefox/Safari; VP9 WebM is the royalty-free fallback; animated WebP is an <img>.
VIDEO_FORMATS: Dict[str, tuple] = {
    "mp4": ("mp4", "libx264", "yuv420p", ".mp4", "video/mp4"),
    "webm": ("webm", "libvpx-vp9", "yuv420p", ".webm", "video/webm"),
    "webp": ("webp", "libwebp_anim", "yuv420p", ".webp", "image/webp"),
}


def boundaries(masks: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary of each mask in a (T,H,W) (or (H,W)) bool stack: foreground pixels with a
    background pixel within ``width`` (4-neighbourhood, repeated), computed with array shifts."""
    m = np.asarray(masks, bool)
    inner = m.copy()
    for _ in range(max(1, width)):
        nxt = inner.copy()
        nxt[..., 1:, :] &= inner[..., :-1, :]
        nxt[..., :-1, :] &= inner[..., 1:, :]
        nxt[..., :, 1:] &= inner[..., :, :-1]
        nxt[..., :, :-1] &= inner[..., :, 1:]
        # the image border is background for this purpose, so objects touching it stay outlined
        nxt[..., 0, :] = nxt[..., -1, :] = False
        nxt[..., :, 0] = nxt[..., :, -1] = False
        inner = nxt
    return m & ~inner


def resize_stack(frames: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Resize every image of a (T,H,W[,C]) stack; masks use nearest-neighbour to stay binary."""
    if frames.shape[1:3] == (height, width):
        return frames
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    src = frames.astype(np.uint8) if frames.dtype == bool else frames
    out = np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in src])
    return out.astype(bool) if frames.dtype == bool else out


def display_size(height: int, width: int, max_width: int = 640) -> tuple[int, int]:
    """(h, w) no wider than ``max_width``, aspect kept, both even (yuv420p needs even sizes)."""
    scale = min(1.0, max_width / max(width, 1))
    h, w = max(2, int(round(height * scale))), max(2, int(round(width * scale)))
    return h - h % 2, w - w % 2


def render_overlay(
    frames: Optional[np.ndarray],
    masks: np.ndarray,
    gt: Optional[np.ndarray] = None,
    alpha: float = 0.45,
    outline: int = 2,
) -> np.ndarray:
    """(T,H,W,3) uint8: the prediction tinted and outlined on the frames, GT outlined in green.

    Without frames (the dataset is not reachable from here) the masks are drawn on grey, so a
    report of a remote run still shows what was segmented.
    """
    masks = np.asarray(masks, bool)
    if frames is None:
        base = np.full(masks.shape + (3,), 60, np.uint8)
    else:
        base = np.asarray(frames, np.uint8)
    out = base.astype(np.float32)
    colour = np.asarray(PRED_COLOUR, np.float32)
    fill = masks[..., None]
    out = np.where(fill, out * (1 - alpha) + colour * alpha, out)
    out[boundaries(masks, outline)] = colour
    if gt is not None:
        out[boundaries(np.asarray(gt, bool), outline)] = np.asarray(GT_COLOUR, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def mark_frames(
    images: np.ndarray,
    labels: Sequence[str],
    highlight: Iterable[int] = (),
    border: int = 4,
) -> np.ndarray:
    """Write a label in the corner of each image and a red border around the highlighted ones."""
    out = images.copy()
    idx = np.asarray(sorted(set(int(i) for i in highlight)), int)
    if idx.size:
        b = max(1, border)
        out[idx, :b] = WORST_COLOUR
        out[idx, -b:] = WORST_COLOUR
        out[idx, :, :b] = WORST_COLOUR
        out[idx, :, -b:] = WORST_COLOUR
    h, w = out.shape[1:3]
    longest = max([len(t) for t in labels] + [1])
    # Hershey simplex is ~20 px per character at scale 1: the longest label spans at most 60% of
    # the width, and the text stays under ~1/12 of the height
    scale = float(np.clip(min(0.6 * w / (20 * longest), h / 400), 0.3, 1.0))
    thick = max(1, int(round(scale * 1.6)))
    for img, text in zip(out, labels):
        if not text:
            continue
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x, y = 8, 6 + th
        box = img[max(0, y - th - 4): y + base + 3, max(0, x - 4): x + tw + 4]
        box[:] = box // 3  # darkened backdrop: white text reads on any frame
        cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def available_formats() -> list[str]:
    """Video formats whose encoder the installed PyAV (its bundled FFmpeg) provides."""
    import av

    return [name for name, spec in VIDEO_FORMATS.items() if spec[1] in av.codecs_available]


def pick_format(preferred: str = "mp4") -> str:
    """``preferred`` when its encoder exists, else the first available one (mp4 > webm > webp)."""
    have = available_formats()
    if preferred in have:
        return preferred
    if not have:
        raise RuntimeError("PyAV has none of the encoders libx264, libvpx-vp9, libwebp_anim")
    return have[0]


def write_video(path: Path, images: np.ndarray, fps: float = 12.0, fmt: str = "mp4", crf: int = 26) -> Path:
    """Encode a (T,H,W,3) uint8 RGB stack with PyAV; returns the file written (suffix of ``fmt``).

    MP4 gets ``+faststart`` (index first) so a browser can start playing before the whole file
    arrived; odd sizes are cropped to even ones, which yuv420p requires.
    """
    import av

    container_fmt, codec, pix_fmt, suffix, _ = VIDEO_FORMATS[fmt]
    path = Path(path).with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.ascontiguousarray(images[:, : images.shape[1] // 2 * 2, : images.shape[2] // 2 * 2])
    t, h, w = images.shape[:3]
    options = {"movflags": "+faststart"} if container_fmt == "mp4" else {}
    tmp = path.with_name(f".{path.name}.tmp")
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(tmp), mode="w", format=container_fmt, options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "profile": "high"}
        elif codec == "libvpx-vp9":
            stream.options = {"crf": str(crf + 8), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        elif codec == "libwebp_anim":
            stream.pix_fmt = "yuv420p"
            stream.options = {"loop": "0", "quality": "75"}
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """RGB uint8 image -> JPEG bytes (for the worst-frame thumbnails)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
