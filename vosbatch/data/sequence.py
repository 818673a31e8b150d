"""A video sequence: ordered frames (image files or one video file) plus optional ground truth.

Sequences are cheap descriptions (paths and a few numbers) so the driver can list and shard millions
of them and ship them to Ray actors; pixels are read by the worker, a window of frames at a time
(:meth:`Sequence.load_frames` with ``start``/``stop``), so a long video never has to fit in memory.

Frames and masks may be local paths or ``s3://`` URIs (read through pyarrow's S3 filesystem, see
:mod:`vosbatch.io.fs`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np

from ..errors import InputError
from ..io.fs import is_s3, read_bytes
from ..names import check_name, is_safe_name, safe_name

#: A frame or mask location: a local path or an ``s3://`` URI (kept as ``str``).
Location = Union[Path, str]
#: One frame's ground truth: a mask file, several per-object files whose union is the mask
#: (SegTrack-v2), or None for a frame without annotation (FBMS-59 annotates every 20th frame).
GtEntry = Union[Location, Tuple[Location, ...], None]


@dataclass
class Sequence:
    dataset: str
    name: str
    frame_paths: List[Location]
    gt_paths: Optional[List[GtEntry]] = None
    missing_reason: Optional[str] = None  # set when the sequence could not even be listed
    meta: dict = field(default_factory=dict)
    #: The DAVIS protocol scores neither the first nor the last frame; SegTrack-v2 and FBMS-59
    #: score every annotated frame.
    exclude_first_last: bool = True
    #: A video file (path or ``s3://`` URI) the frames are decoded from; ``frame_paths`` is then empty.
    video: Optional[str] = None
    #: A folder (path or ``s3://`` prefix) whose images are the frames, listed where they are read: a driver
    #: that lists a corpus keeps a count per sequence (``meta["num_frames"]``), not every frame's path.
    frames_folder: Optional[str] = None

    def __post_init__(self) -> None:
        """Names become safe here, once, for every source (vosbatch.names): the store refuses any other."""
        check_name(self.dataset, "dataset name")
        if not is_safe_name(self.name):
            self.meta.setdefault("given_name", self.name)
            self.name = safe_name(self.name)

    # -- cheap facts (no pixels) ------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """Frame count; for a video from its metadata (0 when the file cannot be opened: ``check``
        then raises the reason), cached in ``meta`` so the driver's sort opens each file once."""
        if self.frames_folder is not None and not self.frame_paths:
            return int(self.meta.get("num_frames", 0))
        if self.video is None:
            return len(self.frame_paths)
        if "num_frames" not in self.meta and "video_error" not in self.meta:
            from .video import count_video_frames

            try:
                self.meta["num_frames"] = count_video_frames(self.video)
            except InputError as e:
                self.meta["video_error"] = str(e)
        return int(self.meta.get("num_frames", 0))

    @property
    def frame_names(self) -> List[str]:
        """Frame file stems; for a video its zero-padded frame indices ("00000", "00001", ...)."""
        if self.video is None:
            return [PurePosixPath(str(p)).stem for p in self.paths()]
        n = self.num_frames
        width = max(5, len(str(max(n - 1, 0))))
        return [f"{i:0{width}d}" for i in range(n)]

    def check(self) -> None:
        """Raise :class:`InputError` for problems visible without reading pixels."""
        if self.missing_reason:
            raise InputError(self.missing_reason)
        n = self.num_frames
        if self.video is not None and "video_error" in self.meta:
            raise InputError(self.meta["video_error"])
        if n < 2:
            if self.video is not None:
                where = self.video
            elif self.frames_folder is not None:
                where = self.frames_folder
            elif self.frame_paths:
                where = _parent(self.frame_paths[0])
            else:
                where = self.meta.get("folder", self.name)
            raise InputError(
                f"sequence {self.name!r} has {n} frame(s) in {where}: at least 2 are needed for optical flow"
            )
        if self.gt_paths is not None and len(self.gt_paths) != n:
            raise InputError(f"sequence {self.name!r}: {len(self.gt_paths)} ground-truth entries for {n} frames")

    # -- pixels ------------------------------------------------------------------------------
    def load_frames(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Frames ``[start, stop)`` (default: all) as uint8 RGB (T,H,W,3); they must share one size.

        For a video only this window is decoded (seek to the keyframe before ``start``, decode
        forward), so memory depends on the window, not on the video's length.
        """
        self.check()
        start, stop = self._window(start, stop)
        if self.video is not None:
            from .video import read_video_window

            frames = read_video_window(self.video, start, stop, self._video_timestamps())
            if len(frames) < stop - start:
                raise InputError(
                    f"{self.video}: only {start + len(frames)} frames decode, the container says {self.num_frames}"
                )
            return frames
        paths = self.paths()[start:stop]
        frames = [read_rgb(p) for p in paths]
        h, w = frames[0].shape[:2]
        for p, f in zip(paths, frames):
            if f.shape[:2] != (h, w):
                raise InputError(f"{p}: frame size {f.shape[1]}x{f.shape[0]} differs from the first frame's {w}x{h}")
        return np.stack(frames)

    def load_gt(
        self, size: Tuple[int, int], start: int = 0, stop: Optional[int] = None
    ) -> Optional[List[Optional[np.ndarray]]]:
        """Binary GT masks (bool) of frames ``[start, stop)``, each checked against the frame size
        (H, W); None entries for frames without annotation; None when the sequence has no GT.

        All annotated objects are merged into one foreground mask: the unsupervised single-object
        convention (SegTrack-v2's per-object folders, FBMS-59's regions).
        """
        if self.gt_paths is None:
            return None
        start, stop = self._window(start, stop)
        decode = _fbms_decoder(self.meta) if self.meta.get("gt_format") == "fbms" else read_mask
        masks: List[Optional[np.ndarray]] = []
        for entry in self.gt_paths[start:stop]:
            if entry is None:
                masks.append(None)
                continue
            parts = entry if isinstance(entry, tuple) else (entry,)
            merged = None
            for p in parts:
                m = decode(p)
                if m.shape != tuple(size):
                    raise InputError(
                        f"{p}: ground-truth size {m.shape[1]}x{m.shape[0]} differs from the frame size {size[1]}x{size[0]}"
                    )
                merged = m if merged is None else merged | m
            masks.append(merged)
        return masks

    def paths(self) -> List[Location]:
        """The frames' files, listing :attr:`frames_folder` on first use (in the process that reads them)."""
        if self.frame_paths or self.frames_folder is None:
            return self.frame_paths
        cache = self.__dict__.get("_paths_cache")
        if cache is None:
            from .inputs import list_frames

            cache = self.__dict__["_paths_cache"] = list_frames(self.frames_folder)
            if len(cache) != self.num_frames:
                raise InputError(f"{self.frames_folder}: {len(cache)} frames now, {self.num_frames} when listed")
        return cache

    # -- helpers -----------------------------------------------------------------------------
    def _window(self, start: int, stop: Optional[int]) -> Tuple[int, int]:
        n = self.num_frames
        stop = n if stop is None else min(int(stop), n)
        start = int(start)
        if not 0 <= start < stop:
            raise ValueError(f"sequence {self.name!r}: frame window [{start}, {stop}) is empty or outside 0..{n}")
        return start, stop

    def _video_timestamps(self) -> Optional[np.ndarray]:
        """Timestamps of the video's frames (one demux pass per process, then reused by every
        window); kept out of pickles so sequences stay small on the wire."""
        cache = self.__dict__.get("_timestamps_cache")
        if cache is None:
            from .video import video_timestamps

            cache = (video_timestamps(self.video),)
            self.__dict__["_timestamps_cache"] = cache
        return cache[0]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_timestamps_cache", None)
        state.pop("_paths_cache", None)
        return state


def _parent(location: Location) -> str:
    return str(location).rsplit("/", 1)[0] if is_s3(location) else str(Path(location).parent)


def _read_file(location: Location, what: str) -> np.ndarray:
    """Raw bytes of a local file or S3 object; InputError naming it when it cannot be read."""
    if not is_s3(location) and not Path(location).is_file():
        raise InputError(f"{location}: {what} file does not exist")
    try:
        return np.frombuffer(read_bytes(location), dtype=np.uint8)
    except OSError as e:  # pyarrow's S3 errors are OSErrors too
        raise InputError(f"{location}: cannot read {what} file ({e})") from e


def read_rgb(path: Location) -> np.ndarray:
    """Read one image as RGB uint8, raising :class:`InputError` naming the file if it cannot."""
    path = path if is_s3(path) else Path(path)
    data = _read_file(path, "frame")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise InputError(f"{path}: cannot decode image (corrupt or not an image, {data.size} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label_image(path: Location) -> np.ndarray:
    """A mask/label image as stored (grey (H,W) or BGR (H,W,3), 8 or 16 bit); InputError naming it."""
    path = path if is_s3(path) else Path(path)
    data = _read_file(path, "mask") if (is_s3(path) or Path(path).is_file()) else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InputError(f"{path}: cannot read mask (missing, corrupt or not an image)")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # an alpha channel carries no label
    return img


def read_mask(path: Location) -> np.ndarray:
    """Read a mask image as bool: any non-zero pixel is foreground (DAVIS 2016 GT is 0/255,
    SegTrack-v2's is 0/255 in grey or colour images)."""
    img = read_label_image(path)
    if img.ndim == 3:
        img = img.max(axis=2)
    return img > 0


def label_colours(img: np.ndarray) -> np.ndarray:
    """Pixel labels as integers: grey values, or ``R*65536 + G*256 + B`` for colour images
    (the encoding FBMS's definition files use for their ``.ppm`` ground truth)."""
    if img.ndim == 2:
        return img.astype(np.int64)
    b, g, r = (img[:, :, i].astype(np.int64) for i in range(3))
    return (r << 16) | (g << 8) | b


def _fbms_decoder(meta: dict):
    background = int(meta["fbms_background"])
    objects = np.asarray(meta.get("fbms_objects") or [], dtype=np.int64)

    def decode(path: Location) -> np.ndarray:
        labels = label_colours(read_label_image(path))
        if objects.size:
            # Colours not in the definition file count as background, as in the official evaluation.
            return np.isin(labels, objects)
        return labels != background

    return decode


def natural_key(name: str) -> list:
    """Sort key treating digit runs as numbers, so ``f_9`` comes before ``f_10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]
