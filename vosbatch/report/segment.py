"""One video (file or folder of frames) segmented on this machine: no cluster, no run folder.

The quickest way to see what vosbatch does: ``vosbatch segment clip.mp4 -o out/`` writes PNG
masks, an overlay video and a summary, using the same predictor the batch job runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from ..config import RunConfig
from ..data.video import cap_height, read_video
from ..errors import InputError
from . import overlay as ov

DEFAULT_FOLDER_FPS = 10.0


@dataclass
class LoadedInput:
    name: str
    kind: str  # "video" | "frames"
    frames: np.ndarray  # (T,H,W,3) uint8 RGB
    frame_names: List[str]
    fps: Optional[float]
    source_size: tuple  # (H, W) before any downscaling
    truncated: bool  # more frames were available than --max-frames allowed


def _cap_height(frames: np.ndarray, max_height: Optional[int]) -> np.ndarray:
    """Downscale frames taller than ``max_height`` (aspect kept): masks come back at this size,
    which keeps full-HD or 4K input within memory."""
    return np.stack([cap_height(f, max_height) for f in frames])


def load_input(path: Path, max_frames: Optional[int] = None, max_height: Optional[int] = None) -> LoadedInput:
    """Frames of a video file (decoded with PyAV) or of a folder of images, in order.

    Raises :class:`InputError` naming the path when it is missing, not decodable or too short.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (give a video file or a folder of frames)")
    if path.is_dir():
        from ..data import frame_folder_sequence

        seq = frame_folder_sequence(path)
        total = seq.num_frames
        if max_frames:
            seq.frame_paths = seq.frame_paths[:max_frames]
        frames = seq.load_frames()  # InputError naming the folder / the bad file
        return LoadedInput(path.name, "frames", _cap_height(frames, max_height), seq.frame_names, None,
                           frames.shape[1:3], total > len(frames))
    video = read_video(path, max_frames=max_frames, max_height=max_height)
    names = [f"{i:05d}" for i in range(len(video.frames))]
    return LoadedInput(path.stem, "video", video.frames, names, video.fps, video.source_size, video.truncated)


def _load_gt(gt_folder: Path, names: List[str], size: tuple) -> np.ndarray:
    from ..data import read_mask

    gt = []
    for n in names:
        m = read_mask(Path(gt_folder) / f"{n}.png")  # InputError naming the file
        if m.shape != tuple(size):
            m = cv2.resize(m.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        gt.append(m)
    return np.stack(gt)


def segment_input(
    path: Path,
    out_dir: Path,
    cfg: Optional[RunConfig] = None,
    max_frames: Optional[int] = 300,
    max_height: Optional[int] = 480,
    gt_folder: Optional[Path] = None,
    video_format: str = "mp4",
    fps: Optional[float] = None,
    worst_k: int = 3,
) -> Dict:
    """Segment one input into ``out_dir``: ``masks/<frame>.png`` (0/255), ``overlay.<fmt>``,
    ``summary.json``. Returns the summary (also what the command prints)."""
    from ..io.png import write_davis_png
    from ..metrics import evaluate_sequence, jaccard
    from ..pipeline import VideoSegmenter

    cfg = cfg or RunConfig()
    t0 = time.perf_counter()
    inp = load_input(path, max_frames, max_height)
    load_s = time.perf_counter() - t0
    gt = _load_gt(gt_folder, inp.frame_names, inp.frames.shape[1:3]) if gt_folder else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    result = VideoSegmenter(cfg).segment(inp.frames, keep_stages=False)
    seg_s = time.perf_counter() - t1
    masks = result.masks
    mask_dir = out_dir / "masks"
    for name, m in zip(inp.frame_names, masks):
        write_davis_png(m, mask_dir / f"{name}.png")
    fg = masks.reshape(len(masks), -1).mean(1)
    summary: Dict = {
        "input": str(path), "kind": inp.kind, "frames": int(len(masks)), "truncated": inp.truncated,
        "source_size": list(inp.source_size), "size": list(masks.shape[1:3]), "input_fps": inp.fps,
        "config": cfg.to_dict(), "seconds_load": load_s, "seconds_segment": seg_s,
        "seconds_by_stage": {k: round(v, 4) for k, v in result.seconds.items()},
        "s_per_frame": seg_s / len(masks), "foreground_mean": float(fg.mean()), "foreground_min": float(fg.min()),
        "foreground_max": float(fg.max()), "empty_frames": int((fg == 0).sum()),
    }
    per_frame_j = None
    if gt is not None:
        scores = evaluate_sequence(list(masks), list(gt))
        per_frame_j = np.array([jaccard(p, g) for p, g in zip(masks, gt)])
        summary.update(j_mean=float(scores.j_mean), f_mean=float(scores.f_mean),
                       jf_mean=float((scores.j_mean + scores.f_mean) / 2))
    # overlay at display size: labels show the frame and its foreground share (or J with GT)
    h, w = ov.display_size(*masks.shape[1:3], max_width=960)
    img = ov.render_overlay(ov.resize_stack(inp.frames, h, w), ov.resize_stack(masks, h, w, nearest=True),
                            ov.resize_stack(gt, h, w, nearest=True) if gt is not None else None)
    labels = [f"{n}  " + (f"J {per_frame_j[t]:.2f}" if per_frame_j is not None else f"fg {fg[t]:.0%}")
              for t, n in enumerate(inp.frame_names)]
    worst = [int(i) for i in np.argsort(per_frame_j, kind="stable")[:worst_k]] if per_frame_j is not None else []
    img = ov.mark_frames(img, labels, worst)
    video_fps = fps or inp.fps or DEFAULT_FOLDER_FPS
    video = ov.write_video(out_dir / "overlay", img, fps=video_fps, fmt=ov.pick_format(video_format))
    summary.update(masks_dir=str(mask_dir), overlay=str(video), overlay_fps=video_fps,
                   worst_frames=[inp.frame_names[i] for i in worst])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["summary_json"] = str(out_dir / "summary.json")
    return summary


def format_summary(s: Dict) -> str:
    """The few lines the command prints."""
    H, W = s["size"]
    src = f" (downscaled from {s['source_size'][1]}x{s['source_size'][0]})" if list(s["source_size"]) != [H, W] else ""
    fps = f", {s['input_fps']:g} fps" if s.get("input_fps") else ""
    cut = " — more frames available, raise --max-frames (0 = all)" if s["truncated"] else ""
    stages = ", ".join(f"{k} {v:.2f}" for k, v in s["seconds_by_stage"].items())
    lines = [
        f"input    {s['input']} ({s['kind']}{fps}): {s['frames']} frames of {W}x{H}{src}{cut}",
        f"time     {s['seconds_segment']:.1f} s segmenting ({s['s_per_frame']:.3f} s/frame; {stages}), {s['seconds_load']:.1f} s reading",
        f"masks    object covers {s['foreground_mean']:.1%} of the frame on average (min {s['foreground_min']:.1%}, "
        f"max {s['foreground_max']:.1%}); {s['empty_frames']} empty frame(s)",
    ]
    if "jf_mean" in s:
        lines.append(f"J&F      {s['jf_mean']:.3f} (J {s['j_mean']:.3f}, F {s['f_mean']:.3f}); worst frames "
                     + ", ".join(s["worst_frames"]))
    lines += [f"wrote    {s['masks_dir']}/ ({s['frames']} PNG masks, 0/255)", f"         {s['overlay']}",
              f"         {s['summary_json']}"]
    return "\n".join(lines)
