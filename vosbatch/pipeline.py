"""The predictor: one object holding the flow and feature models, turning frames into masks.

This is what a Ray actor keeps alive between sequences (models are loaded once per actor) and what
the single-video command uses directly; it knows nothing about clusters, storage or the CLI.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import cv2
import numpy as np

from .config import RunConfig
from .features import create_features
from .flow import create_flow
from .flow.base import BidirectionalFlow
from .flow.cache import cached_flow
from .methods import get_method
from .methods.base import MethodInput, MethodOutput
from .postprocess.binarize import Guide, binarize
from .ops.device import resolve_device
from .progress import report, span
from .quality import frame_signals

log = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    masks: np.ndarray  # (T,H,W) bool at the input resolution
    soft: np.ndarray  # (T,h,w) float32 on the method's grid
    stage_masks: Dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "init": (T,H,W) bool
    seconds: Dict[str, float] = field(default_factory=dict)  # per stage
    info: Dict[str, float] = field(default_factory=dict)
    signals: Dict[str, np.ndarray] = field(default_factory=dict)  # quality signals per frame (vosbatch.quality)


def binarize_as_configured(cfg: RunConfig, frames: Union[np.ndarray, Guide], soft: np.ndarray) -> np.ndarray:
    """Soft masks on the method's grid -> binary masks at the frames' resolution, as ``cfg`` binarises
    them (colour model, then the refinement: fast global smoother, dense CRF or none; one K-means
    threshold per video). It needs no flow or feature model, so saved soft masks are re-scored without
    loading any. ``frames``: the frames, or a :class:`Guide` holding them on the run's device."""
    H, W = (frames.frames if isinstance(frames, Guide) else frames).shape[1:3]
    return binarize(soft, H, W, seed=cfg.seed, guide=frames, colour_weight=cfg.appearance_weight, refine=cfg.refine)


class Timer:
    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T,H,W,C) frames (or maps) area-resampled to (height, width); returned as they are when already that size."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def working_size(height: int, width: int, work_height: int) -> tuple[int, int]:
    """(h, w) with h = work_height (never upsampling) and the aspect ratio kept."""
    if height <= work_height:
        return height, width
    return work_height, max(2, int(round(width * work_height / height)))


def resolve_flow(name: str, device, weights: Optional[str] = None) -> str:
    """``auto``: RAFT-small on a GPU (where learned flow is cheap), when its checkpoint can be had (given, cached,
    or downloaded and checksummed); DIS down to the input's grid on a CPU, or when it cannot."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "dis-fine"
    from .flow.raft import resolve_weights

    try:
        resolve_weights("raft-small", weights)
    except Exception as e:  # noqa: BLE001 - no network, a bad archive...: the CPU flow still works
        log.warning("flow auto: no RAFT-small checkpoint (%s); using dis-fine", e)
        return "dis-fine"
    return "raft-small"


class VideoSegmenter:
    """Holds the models for one configuration; ``segment(frames)`` runs the whole per-video pipeline."""

    def __init__(self, cfg: RunConfig, flow_cache: Optional[str] = None) -> None:
        self.cfg = cfg
        self.flow_cache = flow_cache  # opt-in per-sequence flow cache (reruns, ablations)
        self.device = resolve_device(cfg.device)
        self._device_lock = threading.Lock()
        self.method = get_method(cfg.method)
        self.method_cfg = self.method.config(cfg.method_params)
        self.flow_name = resolve_flow(cfg.flow, self.device, cfg.flow_weights)
        flow_kwargs = {"weights": cfg.flow_weights} if cfg.flow_weights else {}
        if self.flow_name.startswith("raft"):
            flow_kwargs["device"] = self.device
            flow_kwargs["iters"] = cfg.flow_iters
        self.flow = create_flow(self.flow_name, **flow_kwargs)
        feature_kwargs = {"weights": cfg.feature_weights} if cfg.feature_weights else {}
        if cfg.features != "colour":
            feature_kwargs["device"] = self.device
        self.features = create_features(cfg.features, **feature_kwargs)

    def segment(self, frames: np.ndarray, keep_stages: bool = True, prior: Optional[np.ndarray] = None) -> SegmentationResult:
        """``prior``: optional (T,H,W) masks in [0,1] from another method, for methods that refine."""
        out, seconds, flow = self._method_output(frames, prior)
        t0 = time.perf_counter()
        todo = [(None, out.soft)] + (list(out.stages.items()) if keep_stages else [])
        guide = Guide(frames, self.device)  # the frames' colours go to the device once for every stage
        binarized = {}
        for i, (name, soft) in enumerate(todo):
            with span(i / len(todo), (i + 1) / len(todo)):
                binarized[name] = self.binarize(guide, soft, stage=name is not None)
        report("binarize", 1.0)
        masks = binarized.pop(None)
        stages = binarized
        seconds["binarize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        signals = frame_signals(out.soft, out.stages, flow, masks, out.signals)
        seconds["quality"] = time.perf_counter() - t0
        return SegmentationResult(masks, out.soft, stages, seconds, dict(out.info), signals)

    def method_output(self, frames: np.ndarray, prior: Optional[np.ndarray] = None) -> Tuple[MethodOutput, Dict[str, float]]:
        """The method's soft masks on its grid, before binarisation, and the seconds of each step."""
        out, seconds, _ = self._method_output(frames, prior)
        return out, seconds

    def _method_output(self, frames: np.ndarray, prior: Optional[np.ndarray] = None):
        """:meth:`method_output` and the flow on the working grid (what the quality signals need)."""
        timer = Timer()
        t_len, H, W = frames.shape[:3]
        h, w = working_size(H, W, self.cfg.work_height)
        with timer("resize"):
            small = resize_frames(frames, h, w)
        learned_flow = self.flow_name.startswith("raft")
        with timer("flow"), (self._on_device(timer) if learned_flow else nullcontext()):
            flow = self._flow(frames, small)
        if prior is not None:
            prior = resize_frames(prior.astype(np.float32), h, w)
        with self._on_device(timer):
            with timer("features"):
                grid = self._feature_grid((h, w))
                feats = self.features(small, grid) if grid else None
            with timer("method"):
                out = self.method.run(MethodInput(small, flow, feats, prior, self.device), self.method_cfg)
        report("method", 1.0)
        # the method's own stages (e.g. init / optimise) replace its lump sum when it reports them
        method_stages = {k[len("seconds_"):]: out.info.pop(k) for k in [k for k in out.info if k.startswith("seconds_")]}
        if method_stages:
            timer.seconds.pop("method")
            timer.seconds.update(method_stages)
        return out, dict(timer.seconds), flow

    @contextmanager
    def _on_device(self, timer: "Timer"):
        """The stages that run on a GPU: one window at a time (an actor may hold two sequences, one preparing
        on the CPU while the other is here), timed by CUDA events as the device's busy time."""
        if self.device.type != "cuda":
            yield
            return
        import torch

        with self._device_lock:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()
            timer.seconds["device_busy"] = timer.seconds.get("device_busy", 0.0) + start.elapsed_time(end) / 1000.0

    def _flow(self, frames: np.ndarray, small: np.ndarray) -> BidirectionalFlow:
        """Flow on the working grid, estimated at ``flow_height`` (0: the working height) and resized.

        Learned flow (RAFT) works at 1/8 of its input and DIS on 8-pixel patches: at the working height
        of 240 a small or thin object is a few flow cells wide, and its motion blurs into the background's."""
        h, w = small.shape[1:3]
        fh, fw = working_size(*frames.shape[1:3], self.cfg.flow_height or h)
        if (fh, fw) == (h, w):
            return cached_flow(self.flow, small, self.flow_cache)
        return cached_flow(self.flow, resize_frames(frames, fh, fw), self.flow_cache).resized(h, w)

    def binarize(self, frames: Union[np.ndarray, Guide], soft: np.ndarray, stage: bool = False) -> np.ndarray:
        """The output's binarisation, or with ``stage`` an intermediate stage's (``cfg.stage_refine``)."""
        cfg = self.cfg
        if stage and cfg.stage_refine not in (None, cfg.refine):
            cfg = dataclasses.replace(cfg, refine=cfg.stage_refine)
        return binarize_as_configured(cfg, frames, soft)

    def _feature_grid(self, work_hw) -> Optional[tuple[int, int]]:
        """Methods that consume appearance features say on which grid (``Method.feature_grid``)."""
        return self.method.feature_grid(work_hw, self.method_cfg) if self.method.feature_grid else None
