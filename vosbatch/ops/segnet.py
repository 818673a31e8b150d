"""A small U-Net trained from scratch, per video, on pseudo-labels: the video's own appearance model.

Motion finds an object only where it moves against the background; a network trained on a
motion-based segmentation learns what the object *looks like* in this video and so fills in where
motion is ambiguous (the object stops, the background moves, a part is static). It is a pseudo-label student: binarised labels for cross-entropy and the soft labels
(inside the binarised object) for Dice, L = λ1·CE + λ2·Dice with λ1 = λ2 = 0.5 (IKE, Haller et al.),
AdamW. Two users: IKE's network half (:mod:`vosbatch.methods.ike`) and the appearance-net
post-processing of any method's soft masks (:mod:`vosbatch.postprocess.appearance`).

Size: residual blocks at three scales with dilated convolutions at the coarsest one (a wide
receptive field without more down-sampling), 8/16/32 channels by default, trained at about half the
working resolution: a DAVIS video trains in seconds to tens of seconds on 2 CPU cores, and on the
GPU when there is one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .grid import area_to_grid


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"batch"``: statistics learnt over training batches and frozen at prediction, so a whole frame
    is normalised like the crops the net was trained on. ``"group"`` normalises each image by its own
    spatial statistics, which differ between an 80 px crop and a whole frame (another share of object
    in the window). Measured: same raw J on DAVIS; the flat car-shadow background was not this (see
    ``prior_bias``)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(4, channels), channels)
    raise ValueError(f"unknown norm {kind!r}")


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm1 = make_norm(norm, channels)
        self.norm2 = make_norm(norm, channels)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))


class SegNet(nn.Module):
    """U-Net-like: stem, two stride-2 stages, dilated bottleneck, skip-connected decoder, 1-channel logits."""

    def __init__(self, in_channels: int, width: int = 8, norm: str = "batch") -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), ResBlock(c1, norm=norm))
        self.down1 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(), ResBlock(c2, norm=norm))
        self.down2 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(),
                                   ResBlock(c3, 1, norm), ResBlock(c3, 2, norm), ResBlock(c3, 4, norm))
        self.up2 = nn.Sequential(nn.Conv2d(c3 + c2, c2, 3, padding=1), nn.ReLU(), ResBlock(c2, norm=norm))
        self.up1 = nn.Sequential(nn.Conv2d(c2 + c1, c1, 3, padding=1), nn.ReLU(), ResBlock(c1, norm=norm))
        self.head = nn.Conv2d(c1, 1, 1)

    def forward(self, x):
        s1 = self.stem(x)
        s2 = self.down1(s1)
        s3 = self.down2(s2)
        u2 = F.interpolate(s3, size=s2.shape[-2:], mode="bilinear", align_corners=False)
        u2 = self.up2(torch.cat([u2, s2], 1))
        u1 = F.interpolate(u2, size=s1.shape[-2:], mode="bilinear", align_corners=False)
        u1 = self.up1(torch.cat([u1, s1], 1))
        return self.head(u1)


@dataclass
class NetConfig:
    width: int = 8
    steps: int = 150
    batch: int = 4
    lr: float = 3e-3
    crop: int = 80  # square training crops (0: whole frames); prediction is on whole frames
    weight_decay: float = 1e-4
    ce_weight: float = 0.5  # λ1
    dice_weight: float = 0.5  # λ2
    norm: str = "batch"  # "batch" or "group" (see make_norm)
    prior_bias: bool = True  # start the output at the foreground rate of the labels


def frame_inputs(frames: np.ndarray, hw: Tuple[int, int], motion: Optional[torch.Tensor] = None,
                 coords: bool = False) -> torch.Tensor:
    """The net's input (T,C,h,w) float32: RGB area-averaged on the (h,w) grid and standardised over
    the video; optionally the motion maps (T,C',h,w) scaled to unit RMS, and two normalised (y, x)
    coordinate planes (``coords``): the object's place in the frame changes slowly, and a
    translation-equivariant net alone cannot tell a background patch from the same colours on the
    object across the frame."""
    rgb = area_to_grid(frames.astype(np.float32) / 255.0, hw)
    parts = [(rgb - rgb.mean(dim=(0, 2, 3), keepdim=True)) / rgb.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)]
    if motion is not None:
        parts.append(motion / motion.pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt().clamp_min(1e-6))
    if coords:
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, hw[0]), torch.linspace(-1, 1, hw[1]), indexing="ij")
        parts.append(torch.stack([yy, xx])[None].expand(rgb.shape[0], -1, -1, -1))
    return torch.cat(parts, 1).contiguous()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, pooled over the whole batch.

    Per sample, a crop without object has Dice 1 - 1/(Σp + 1): ≈ 1 with a vanishing gradient until
    Σp < 1, a cliff rather than a signal, and such crops are common when the object is small."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + eps) / (p.sum() + target.sum() + eps)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_and_predict(
    inputs: torch.Tensor,
    soft_labels: torch.Tensor,
    threshold: float,
    cfg: NetConfig,
    seed: int = 0,
    device: Optional[torch.device] = None,
) -> tuple[np.ndarray, dict]:
    """Train a fresh SegNet on (T,C,h,w) inputs against (T,1,h,w) soft labels; predict every frame.

    Binary labels are ``soft > threshold`` (the video's own K-means cut). The soft labels should be
    probabilities (above the threshold > 0.5): soft Dice lowers p wherever its target is below Dice/2, so
    a weak score above the threshold is taught as background by one term and as object by the other
    (IKE's ``net_labels``). Deterministic for a seed:
    its own generator for weights and batches, the global RNG state untouched.
    """
    device = device or pick_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SegNet(inputs.shape[1], cfg.width, cfg.norm)
    hard_cpu = (soft_labels > threshold).float()
    if cfg.prior_bias:
        # the head starts at the video's foreground rate (Lin et al., ICCV 2017, "prior" init): from a
        # 0.5 start the background is driven down only as fast as Adam moves one bias (≈ lr per step),
        # which in 150 steps left car-shadow's background at 0.37 and the colour model saw no background
        rate = float(hard_cpu.mean().clamp(0.01, 0.99))
        nn.init.constant_(net.head.bias, float(np.log(rate / (1 - rate))))
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    x_all = inputs.to(device)
    hard_all = hard_cpu.to(device)
    # Dice target: the soft labels inside the object only. The graph's background is a low but
    # non-zero level over most of the frame; its summed mass can exceed the object's, and soft Dice
    # rewards p > 0 wherever its target is > 0, against the CE term's hard background.
    y_all = soft_labels.to(device) * hard_all
    t_len = inputs.shape[0]
    losses = []
    net.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, t_len, (min(cfg.batch, t_len),), generator=gen).to(device)
        x, y, hard = x_all[idx], y_all[idx], hard_all[idx]
        h, w = x.shape[-2:]
        if 0 < cfg.crop < min(h, w):  # one random window per batch: 4-9x cheaper steps on CPU, more variety
            oy = int(torch.randint(0, h - cfg.crop + 1, (1,), generator=gen))
            ox = int(torch.randint(0, w - cfg.crop + 1, (1,), generator=gen))
            x, y, hard = (a[..., oy:oy + cfg.crop, ox:ox + cfg.crop] for a in (x, y, hard))
        if bool(torch.rand(1, generator=gen) < 0.5):  # horizontal flip: the object's side is not a cue
            x, y, hard = x.flip(-1), y.flip(-1), hard.flip(-1)
        logits = net(x)
        loss = (cfg.ce_weight * F.binary_cross_entropy_with_logits(logits, hard)
                + cfg.dice_weight * soft_dice_loss(logits, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())  # kept on the device: no host sync per step
    net.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, t_len, 8):  # a few frames at a time: bounded activation memory
            preds.append(torch.sigmoid(net(x_all[s:s + 8])).cpu())
    pred = torch.cat(preds)[:, 0].numpy().astype(np.float32)
    losses = torch.stack(losses).cpu().numpy()
    return pred, {"loss_start": float(np.mean(losses[:10])), "loss_end": float(np.mean(losses[-10:]))}
