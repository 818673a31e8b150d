"""Video files as frames: decoded with PyAV (FFmpeg), so any container/codec FFmpeg reads works."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..errors import InputError


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (T,H,W,3) uint8 RGB
    fps: Optional[float]
    source_size: Tuple[int, int]  # (H, W) before any downscaling
    truncated: bool  # stopped at max_frames


def cap_height(img: np.ndarray, max_height: Optional[int]) -> np.ndarray:
    """Downscale one frame so its height is at most ``max_height`` (aspect kept; None/0: as is)."""
    h, w = img.shape[:2]
    if not max_height or h <= max_height:
        return img
    return cv2.resize(img, (max(2, round(w * max_height / h)), max_height), interpolation=cv2.INTER_AREA)


def read_video(path: Path, max_frames: Optional[int] = None, max_height: Optional[int] = None) -> DecodedVideo:
    """Decode a video file's first video stream as RGB frames.

    Raises :class:`InputError` naming the file when it has no video stream, cannot be decoded or
    yields fewer than 2 frames; a file cut short keeps the frames that decoded, as players do.
    """
    import av

    path = Path(path)
    source = (0, 0)
    fps = None
    frames_l: List[np.ndarray] = []
    truncated = False
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream in this file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            for frame in container.decode(stream):
                if max_frames and len(frames_l) >= max_frames:
                    truncated = True
                    break
                img = frame.to_ndarray(format="rgb24")
                frames_l.append(cap_height(img, max_height))
                if len(frames_l) == 1:
                    source = img.shape[:2]
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        if not frames_l:  # a file cut short keeps the frames that decoded, as players do
            raise InputError(f"{path}: cannot decode as a video ({e})") from e
    if len(frames_l) < 2:
        raise InputError(f"{path}: {len(frames_l)} frame(s) decoded; at least 2 are needed for optical flow")
    return DecodedVideo(np.stack(frames_l), fps, source, truncated)
