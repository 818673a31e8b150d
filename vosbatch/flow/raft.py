"""RAFT optical flow (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow",
ECCV 2020), in plain torch, small and full model.

Read top to bottom: the feature and context encoders (paper Sec. 3.1), the all-pairs correlation
pyramid and its lookup (Sec. 3.2), the recurrent ConvGRU update operator (Sec. 3.3), upsampling
(Sec. 3.3, "Upsampling"), the model, then padding, checkpoints and the :class:`FlowBackend`.

Module names and shapes mirror the authors' code (github.com/princeton-vl/RAFT) one for one, so the
official checkpoints (``raft-small.pth``, ``raft-things.pth`` ...) load with ``strict=True``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FlowBackend, register_flow

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Feature / context encoders (Sec. 3.1): 1/8-resolution feature maps from a small CNN.
# ---------------------------------------------------------------------------------------------


def _norm(norm_fn: str, channels: int, groups: Optional[int] = None) -> nn.Module:
    """The normalisations of the authors' encoders (feature net: instance; context: batch or none)."""
    if norm_fn == "group":
        return nn.GroupNorm(num_groups=groups or channels // 8, num_channels=channels)
    if norm_fn == "batch":
        return nn.BatchNorm2d(channels)
    if norm_fn == "instance":
        return nn.InstanceNorm2d(channels)  # no affine, no running stats: no state-dict entries
    if norm_fn == "none":
        return nn.Sequential()
    raise ValueError(f"unknown norm_fn {norm_fn!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (full model)."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str = "group", stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm(norm_fn, planes)
        self.norm2 = _norm(norm_fn, planes)
        self.downsample = None
        if stride != 1:
            # The official code registers this norm twice (as norm3 and downsample.1); so do we,
            # because a batch-norm checkpoint stores it under both names.
            self.norm3 = _norm(norm_fn, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with a skip connection (small model)."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str = "group", stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes // 4, kernel_size=1, padding=0)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm(norm_fn, planes // 4)
        self.norm2 = _norm(norm_fn, planes // 4)
        self.norm3 = _norm(norm_fn, planes)
        self.downsample = None
        if stride != 1:
            self.norm4 = _norm(norm_fn, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class _Encoder(nn.Module):
    """7x7/2 stem, three stages of two blocks (strides 1, 2, 2) and a 1x1 output projection: 1/8 res."""

    block: type = ResidualBlock

    def __init__(self, widths: tuple, output_dim: int, norm_fn: str) -> None:
        super().__init__()
        stem = widths[0]
        self.norm_fn = norm_fn
        self.norm1 = _norm(norm_fn, stem, groups=8)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.in_planes = stem
        self.layer1 = self._make_layer(widths[0], stride=1)
        self.layer2 = self._make_layer(widths[1], stride=2)
        self.layer3 = self._make_layer(widths[2], stride=2)
        self.conv2 = nn.Conv2d(widths[2], output_dim, kernel_size=1)
        for m in self.modules():  # the authors' initialisation (matters only for training)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, dim: int, stride: int) -> nn.Sequential:
        layer = nn.Sequential(
            self.block(self.in_planes, dim, self.norm_fn, stride=stride), self.block(dim, dim, self.norm_fn, stride=1)
        )
        self.in_planes = dim
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


class BasicEncoder(_Encoder):
    """Full-model encoder: residual blocks of width 64, 96, 128."""

    block = ResidualBlock

    def __init__(self, output_dim: int = 128, norm_fn: str = "batch") -> None:
        super().__init__((64, 96, 128), output_dim, norm_fn)


class SmallEncoder(_Encoder):
    """Small-model encoder: bottleneck blocks of width 32, 64, 96."""

    block = BottleneckBlock

    def __init__(self, output_dim: int = 128, norm_fn: str = "batch") -> None:
        super().__init__((32, 64, 96), output_dim, norm_fn)


# ---------------------------------------------------------------------------------------------
# All-pairs correlation pyramid (Sec. 3.2).
# ---------------------------------------------------------------------------------------------


class CorrPyramid:
    """Dot products of every feature vector of frame 1 with every one of frame 2, pooled over the
    last two dimensions into ``levels`` scales; looked up around the current flow estimate.

    The volume is built once per pair; each GRU iteration only samples a (2r+1)^2 window per level
    around ``x + f(x)`` (scaled by 2^-level), so an iteration costs O(HW * levels * r^2).
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int = 4, radius: int = 4) -> None:
        n, c, h, w = fmap1.shape
        corr = torch.matmul(fmap1.reshape(n, c, h * w).transpose(1, 2), fmap2.reshape(n, c, h * w))
        corr = (corr / torch.sqrt(torch.tensor(float(c)))).reshape(n * h * w, 1, h, w)
        self.pyramid = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)
        self.radius = radius
        d = torch.arange(-radius, radius + 1, dtype=fmap1.dtype, device=fmap1.device)
        # Window offsets as (x, y) with x varying along the first window axis: this reproduces the
        # channel order of the official lookup (x-offset major), which the trained weights expect.
        dx, dy = torch.meshgrid(d, d, indexing="ij")
        self.delta = torch.stack([dx, dy], dim=-1).view(1, 2 * radius + 1, 2 * radius + 1, 2)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (N,2,h,w), pixel positions in frame 2 at 1/8 resolution -> (N, levels*(2r+1)^2, h, w)."""
        n, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(self.pyramid):
            hl, wl = corr.shape[-2:]
            # Pixels -> [-1, 1] (align_corners=True), zeros outside, as in the authors' code; one
            # grid_sample call per level covers every pixel of every pair in the batch.
            scale = coords.new_tensor([2.0 / max(wl - 1, 1), 2.0 / max(hl - 1, 1)])
            grid = (centre / 2**i + self.delta) * scale - 1.0
            sampled = F.grid_sample(corr, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out.append(sampled.view(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Update operator (Sec. 3.3): a convolutional GRU that refines the flow from correlation features.
# ---------------------------------------------------------------------------------------------


class FlowHead(nn.Module):
    """Two convolutions from the GRU state to a flow residual."""

    def __init__(self, input_dim: int = 128, hidden_dim: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def _gru_step(h, x, convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d) -> torch.Tensor:
    """One GRU update with convolutional gates: h' = (1-z) h + z tanh(convq([r h, x]))."""
    hx = torch.cat([h, x], dim=1)
    # z and r read the same input: one convolution with both weight sets is cheaper than two.
    weight, bias = torch.cat([convz.weight, convr.weight]), torch.cat([convz.bias, convr.bias])
    z, r = torch.sigmoid(F.conv2d(hx, weight, bias, padding=convz.padding)).chunk(2, dim=1)
    q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
    return torch.lerp(h, q, z)


class ConvGRU(nn.Module):
    """GRU with 3x3 convolutions in place of fully connected layers (small model)."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _gru_step(h, x, self.convz, self.convr, self.convq)


class SepConvGRU(nn.Module):
    """Two GRUs, a 1x5 then a 5x1 one: a large receptive field at little cost (full model)."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128) -> None:
        super().__init__()
        c = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = _gru_step(h, x, self.convz1, self.convr1, self.convq1)  # horizontal
        return _gru_step(h, x, self.convz2, self.convr2, self.convq2)  # vertical


class SmallMotionEncoder(nn.Module):
    """Correlation and current flow -> motion features (82 channels incl. the flow itself)."""

    def __init__(self, corr_planes: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_planes, 96, 1, padding=0)
        self.convf1 = nn.Conv2d(2, 64, 7, padding=3)
        self.convf2 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv = nn.Conv2d(128, 80, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc1(corr))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class BasicMotionEncoder(nn.Module):
    """Correlation and current flow -> motion features (128 channels incl. the flow itself)."""

    def __init__(self, corr_planes: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_planes, 256, 1, padding=0)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SmallUpdateBlock(nn.Module):
    def __init__(self, corr_planes: int, hidden_dim: int = 96) -> None:
        super().__init__()
        self.encoder = SmallMotionEncoder(corr_planes)
        self.gru = ConvGRU(hidden_dim=hidden_dim, input_dim=82 + 64)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=128)

    def forward(self, net, inp, corr, flow):
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], dim=1))
        return net, self.flow_head(net)


class BasicUpdateBlock(nn.Module):
    def __init__(self, corr_planes: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder(corr_planes)
        self.gru = SepConvGRU(hidden_dim=hidden_dim, input_dim=128 + hidden_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=256)
        # Convex-upsampling weights: 8x8 sub-pixels x 3x3 coarse neighbours.
        self.mask = nn.Sequential(
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(256, 64 * 9, 1, padding=0)
        )

    def forward(self, net, inp, corr, flow):
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], dim=1))
        return net, self.flow_head(net)

    def upsample_mask(self, net: torch.Tensor) -> torch.Tensor:
        """Scaled by 0.25 as in the official code (balances gradients in training)."""
        return 0.25 * self.mask(net)


# ---------------------------------------------------------------------------------------------
# Upsampling (Sec. 3.3): the 1/8-res flow back to full resolution.
# ---------------------------------------------------------------------------------------------


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each full-res pixel is a learned convex combination of its 3x3 coarse neighbours (full model)."""
    n, _, h, w = flow.shape
    mask = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
    up = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
    up = torch.sum(mask * up, dim=2)  # (n, 2, 8, 8, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)


def bilinear_upsample8(flow: torch.Tensor) -> torch.Tensor:
    """Bilinear x8 with vectors scaled by 8 (small model, which has no mask head)."""
    return 8 * F.interpolate(flow, size=(8 * flow.shape[2], 8 * flow.shape[3]), mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


class RAFT(nn.Module):
    """RAFT: encoders, correlation pyramid, ``iters`` GRU refinements from zero flow, upsampling.

    ``forward`` takes two image batches (N,3,H,W) with values in 0..255, H and W multiples of 8, and
    returns the final full-resolution flow from image1 to image2 (N,2,H,W), channel 0 = x.
    """

    def __init__(self, small: bool = False) -> None:
        super().__init__()
        self.small = small
        self.corr_levels = 4
        if small:
            self.hidden_dim, self.context_dim, self.corr_radius = 96, 64, 3
        else:
            self.hidden_dim, self.context_dim, self.corr_radius = 128, 128, 4
        corr_planes = self.corr_levels * (2 * self.corr_radius + 1) ** 2
        hc = self.hidden_dim + self.context_dim
        if small:
            self.fnet = SmallEncoder(output_dim=128, norm_fn="instance")
            self.cnet = SmallEncoder(output_dim=hc, norm_fn="none")
            self.update_block = SmallUpdateBlock(corr_planes, hidden_dim=self.hidden_dim)
        else:
            self.fnet = BasicEncoder(output_dim=256, norm_fn="instance")
            self.cnet = BasicEncoder(output_dim=hc, norm_fn="batch")
            self.update_block = BasicUpdateBlock(corr_planes, hidden_dim=self.hidden_dim)
        self.mixed_precision = False  # fp16 autocast for encoders and update block (CUDA only)

    @staticmethod
    def coords_grid(n: int, h: int, w: int, device) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        return torch.stack([xs, ys], dim=0).float()[None].repeat(n, 1, 1, 1)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12) -> torch.Tensor:
        n, _, h, w = image1.shape
        if h % 8 or w % 8:
            raise ValueError(f"RAFT needs H and W divisible by 8 (pad with InputPadder), got {h}x{w}")
        image1 = (2 * (image1 / 255.0) - 1.0).contiguous()
        image2 = (2 * (image2 / 255.0) - 1.0).contiguous()
        amp = dict(device_type=image1.device.type, dtype=torch.float16, enabled=self.mixed_precision)

        with torch.autocast(**amp):  # feature network, both frames in one batch
            fmap1, fmap2 = self.fnet(torch.cat([image1, image2], dim=0)).split([n, n], dim=0)
        corr_fn = CorrPyramid(fmap1.float(), fmap2.float(), levels=self.corr_levels, radius=self.corr_radius)

        with torch.autocast(**amp):  # context network on frame 1: GRU initial state and its input
            net, inp = self.cnet(image1).split([self.hidden_dim, self.context_dim], dim=1)
            net, inp = torch.tanh(net), torch.relu(inp)

        coords0 = self.coords_grid(n, h // 8, w // 8, image1.device)
        coords1 = coords0.clone()
        for _ in range(iters):
            corr = corr_fn(coords1)
            with torch.autocast(**amp):
                net, delta = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta.float()  # F(t+1) = F(t) + delta
        flow = coords1 - coords0
        if self.small:
            return bilinear_upsample8(flow)
        with torch.autocast(**amp):
            mask = self.update_block.upsample_mask(net)  # needed only for the final prediction
        return convex_upsample(flow, mask.float())


class InputPadder:
    """Replicate-pad to a multiple of 8, centred ("sintel" mode of the official InputPadder).

    ``min_size`` additionally pads tiny images up to the size the 4-level pyramid needs.
    """

    def __init__(self, height: int, width: int, min_size: int = 64) -> None:
        self.height, self.width = height, width
        pad_h = max(-(-height // 8) * 8, min_size) - height
        pad_w = max(-(-width // 8) * 8, min_size) - width
        self.pad = [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]  # l, r, t, b

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not any(self.pad):
            return x
        return F.pad(x, self.pad, mode="replicate")

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        left, top = self.pad[0], self.pad[2]
        return x[..., top : top + self.height, left : left + self.width]


# ---------------------------------------------------------------------------------------------
# Checkpoints: strict loading of the authors' files; where to find them.
# ---------------------------------------------------------------------------------------------

#: The authors' archive of trained models (``models/raft-small.pth``, ``models/raft-things.pth`` ...).
RAFT_MODELS_URL = "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip"
#: Archive member used per backend.
CHECKPOINT_FILES = {"raft-small": "raft-small.pth", "raft": "raft-things.pth"}
#: Known digests of archive members, checked when downloading from the official URL.
KNOWN_SHA256 = {"raft-small.pth": "c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332"}


class RAFTCheckpointError(ValueError):
    """The weights file is not a checkpoint, or not one of this architecture. The message names it."""


def load_checkpoint(model: RAFT, path: Union[str, Path]) -> RAFT:
    """Load an official (or our own) RAFT state dict strictly; ``module.`` prefixes are stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RAFT weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds
        raise RAFTCheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RAFTCheckpointError(f"{path} does not hold a state dict (name -> tensor), got {type(state).__name__}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
             if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        kind = "RAFT-small" if model.small else "RAFT (full)"

        def few(items):
            return ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")

        problems = [f"{label}: {few(items)}" for label, items in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if items]
        raise RAFTCheckpointError(f"{path} does not match the {kind} architecture; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def models_dir() -> Path:
    """Where downloaded checkpoints live: ``$VOSBATCH_CACHE/models`` or ``~/.cache/vosbatch/models``."""
    root = os.environ.get("VOSBATCH_CACHE")
    return Path(root).expanduser() / "models" if root else Path.home() / ".cache" / "vosbatch" / "models"


def resolve_weights(variant: str, weights: Optional[Union[str, Path]] = None, download: bool = True) -> Path:
    """Explicit path > ``$VOSBATCH_RAFT_WEIGHTS`` > cache dir > download of the official archive."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"RAFT weights file not found: {path}")
        return path
    env = os.environ.get("VOSBATCH_RAFT_WEIGHTS", "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"VOSBATCH_RAFT_WEIGHTS points to a missing file: {path}")
        return path
    cached = models_dir() / CHECKPOINT_FILES[variant]
    if cached.is_file():
        return cached
    if not download:
        raise FileNotFoundError(f"no {variant} weights: pass weights=PATH, set VOSBATCH_RAFT_WEIGHTS or put {cached}")
    return fetch_checkpoint(CHECKPOINT_FILES[variant], cached.parent)


def fetch_checkpoint(member: str, dest_dir: Path, url: Optional[str] = None, progress: bool = True) -> Path:
    """Download the authors' ``models.zip`` (``$VOSBATCH_RAFT_URL`` overrides the URL) and extract
    ``models/<member>`` to ``dest_dir/<member>`` atomically. The archive is deleted afterwards."""
    from ..data.download import DownloadError, download_file

    url = url or os.environ.get("VOSBATCH_RAFT_URL", "").strip() or RAFT_MODELS_URL
    dest_dir = Path(dest_dir)
    dest = dest_dir / member
    archive = dest_dir / "raft-models.zip"
    log.info("downloading RAFT checkpoints from %s", url)
    download_file(url, archive, progress=progress)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{member}.", suffix=".tmp", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == member]
                if not names:
                    listing = ", ".join(zf.namelist()[:10])
                    raise DownloadError(f"archive from {url} has no {member} (members: {listing})")
                with zf.open(sorted(names, key=len)[0]) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
            digest = _sha256(Path(tmp))
            if url == RAFT_MODELS_URL and member in KNOWN_SHA256 and digest != KNOWN_SHA256[member]:
                raise DownloadError(f"{member} from {url} has sha256 {digest}, expected {KNOWN_SHA256[member]}")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DownloadError(f"archive downloaded from {url} is corrupt ({exc}); deleted it, run again") from exc
    finally:
        archive.unlink(missing_ok=True)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The flow backend.
# ---------------------------------------------------------------------------------------------


class RAFTFlow(FlowBackend):
    """RAFT behind :class:`FlowBackend`: eval mode, inference mode, several pairs per forward pass.

    ``device="auto"`` picks CUDA when available (then with fp16 autocast, as the authors'
    ``--mixed_precision``) and the CPU otherwise, using as many threads as ``torch.set_num_threads``.
    ``batch_size`` pairs go through one forward pass (default 8 on CUDA, 1 on the CPU, where larger
    batches are no faster; the correlation volume of a 480p pair alone takes 165 MB).
    ``fingerprint`` identifies the weights and iterations (for the flow cache).
    """

    def __init__(
        self,
        small: bool = True,
        weights: Optional[Union[str, Path]] = None,
        iters: int = 12,
        device: Union[str, torch.device] = "auto",
        batch_size: Optional[int] = None,
        mixed_precision: Optional[bool] = None,
        download: bool = True,
    ) -> None:
        self.name = "raft-small" if small else "raft"
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if batch_size is None:  # batching does not speed up the CPU, it only costs memory
            batch_size = 8 if self.device.type == "cuda" else 1
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.iters, self.batch_size = int(iters), int(batch_size)
        self.weights = resolve_weights(self.name, weights, download=download)
        self.model = load_checkpoint(RAFT(small=small), self.weights).eval().to(self.device)
        self.model.mixed_precision = self.device.type == "cuda" if mixed_precision is None else bool(mixed_precision)
        self.fingerprint = f"{self.name}-{_sha256(self.weights)[:16]}-iters{self.iters}"

    def pair_batch(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if sources.shape != targets.shape or sources.ndim != 4 or sources.shape[-1] != 3:
            raise ValueError(f"sources and targets must both be (N,H,W,3); got {sources.shape} and {targets.shape}")
        n, h, w, _ = sources.shape
        padder = InputPadder(h, w)
        out = np.empty((n, h, w, 2), np.float32)
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                im1, im2 = (
                    padder(torch.from_numpy(np.ascontiguousarray(a[i : i + self.batch_size])).to(self.device)
                           .permute(0, 3, 1, 2).float())
                    for a in (sources, targets)
                )
                flow = padder.unpad(self.model(im1, im2, iters=self.iters))
                out[i : i + len(flow)] = flow.permute(0, 2, 3, 1).float().cpu().numpy()
        return out


@register_flow("raft-small")
def _raft_small(weights: Optional[str] = None, iters: int = 12, device="auto", **kwargs) -> RAFTFlow:
    return RAFTFlow(small=True, weights=weights, iters=iters, device=device, **kwargs)


@register_flow("raft")
def _raft_full(weights: Optional[str] = None, iters: int = 12, device="auto", **kwargs) -> RAFTFlow:
    return RAFTFlow(small=False, weights=weights, iters=iters, device=device, **kwargs)
