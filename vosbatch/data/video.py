"""Video files as frames: decoded with PyAV (FFmpeg), so any container/codec FFmpeg reads works."""
from __future__ import annotations

import contextlib
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


# -- windowed access: a few frames of a long video without decoding or holding the rest ---------

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".ogv")


@contextlib.contextmanager
def _open_video(source: str):
    """Open a local video (FFmpeg reads it natively) or an ``s3://`` object (read through pyarrow in
    large ranged reads); InputError naming the source when it cannot be opened."""
    import av

    from ..io.fs import is_s3, open_seekable

    fh = None
    if is_s3(source):
        try:
            fh = open_seekable(source)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from OSError
            raise InputError(f"{source}: cannot open video ({e})") from e
    elif not Path(source).is_file():
        raise InputError(f"{source}: video file does not exist")
    try:
        try:
            container = av.open(fh if fh is not None else str(source), mode="r")
        except (av.FFmpegError, OSError, ValueError) as e:
            raise InputError(f"{source}: cannot decode video ({e})") from e
        with container:
            if not container.streams.video:
                raise InputError(f"{source}: no video stream in this file")
            yield container
    finally:
        if fh is not None:
            fh.close()


def count_video_frames(source: str) -> int:
    """Frames in the first video stream from container metadata, else a demux-only packet count.

    Nothing is decoded, so this is cheap even for long videos (the packet count reads the file but
    does not decode it).
    """
    import av

    with _open_video(source) as container:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        try:
            return sum(1 for p in container.demux(stream) if p.size)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise InputError(f"{source}: cannot read video packets ({e})") from e


def video_timestamps(source: str) -> Optional[np.ndarray]:
    """Presentation timestamps of every frame, in display order, from a demux-only pass.

    Frame ``i`` of the video is the one shown at ``timestamps[i]``; with it a window can be reached
    by seeking, even with B-frames or a variable frame rate. None when the container does not carry
    timestamps on its packets (then windows are read by decoding from the start).
    """
    import av

    with _open_video(source) as container:
        stream = container.streams.video[0]
        pts = []
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue  # the empty packet that flushes the decoder
                if packet.pts is None:
                    return None
                pts.append(packet.pts)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise InputError(f"{source}: cannot read video packets ({e})") from e
    out = np.sort(np.asarray(pts, dtype=np.int64))
    if len(out) and np.any(np.diff(out) == 0):
        return None  # duplicated timestamps: frame identity by timestamp is ambiguous
    return out


def read_video_window(source: str, start: int, stop: int, timestamps: Optional[np.ndarray] = None) -> np.ndarray:
    """Frames ``[start, stop)`` of a video as (T,H,W,3) uint8 RGB, decoding only what is needed.

    With ``timestamps`` (see :func:`video_timestamps`) the reader seeks to the keyframe at or before
    frame ``start`` and decodes forward, identifying frames by their timestamps; without, or if the
    seek lands past ``start``, it decodes from the beginning and keeps only the window. Either way
    only the window's frames are held. Fewer frames come back only when the video ends early.
    """
    import av

    start = max(0, int(start))
    stop = int(stop)
    if stop <= start:
        raise ValueError(f"empty frame window [{start}, {stop})")
    try:
        if timestamps is not None and start > 0 and start < len(timestamps):
            index = {int(t): i for i, t in enumerate(timestamps)}
            for seek_frame in (start, max(0, start - 64)):
                frames = _decode_after_seek(source, int(timestamps[seek_frame]), index, start, stop)
                if frames is not None:
                    return _stack(source, frames, start)
        frames = []
        with _open_video(source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i >= stop:
                    break
                if i >= start:
                    frames.append(frame.to_ndarray(format="rgb24"))
        return _stack(source, frames, start)
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"{source}: cannot decode video ({e})") from e


def _decode_after_seek(source: str, seek_pts: int, index: dict, start: int, stop: int) -> Optional[List[np.ndarray]]:
    """Decode ``[start, stop)`` after seeking to ``seek_pts``; None when the seek overshot or a frame
    cannot be identified by its timestamp (the caller then tries further back / from the start)."""
    with _open_video(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        frames: List[np.ndarray] = []
        expected = start
        for frame in container.decode(stream):
            i = index.get(frame.pts) if frame.pts is not None else None
            if i is None:
                return None
            if i < start:
                continue  # between the keyframe and the window, or leading frames of an open GOP
            if i != expected:
                return None  # landed past the window's start or skipped a frame: not trustworthy
            if i >= stop:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
            expected += 1
            if expected >= stop:
                break
        return frames if frames else None


def _stack(source: str, frames: List[np.ndarray], start: int) -> np.ndarray:
    if not frames:
        raise InputError(f"{source}: no frame decoded from frame {start} on (the video is shorter or corrupt)")
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape[:2] != (h, w):
            raise InputError(f"{source}: frame {start + i} size {f.shape[1]}x{f.shape[0]} differs from {w}x{h}")
    return np.stack(frames)
