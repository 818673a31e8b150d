"""A small U-Net trained from scratch, per video, on pseudo-labels: the video's own appearance model.

Motion finds an object only where it moves against the background; a network trained on a
motion-based segmentation learns what the object *looks like* in this video and so fills in where
motion is ambiguous (the object stops, the background moves, a part is static). It is a pseudo-label student: binarised labels for cross-entropy and the soft labels
(inside the binarised object) for Dice, L = λ1·CE + λ2·Dice with λ1 = λ2 = 0.5 (IKE, Haller et al.),
AdamW. IKE's network half (:mod:`vosbatch.methods.ike`).

Size: residual blocks at three scales with dilated convolutions at the coarsest one (a wide
receptive field without more down-sampling), 8/16/32 channels by default, trained at about half the
working resolution: a DAVIS video trains in seconds to tens of seconds on 2 CPU cores, and on the
GPU when there is one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import report

if TYPE_CHECKING:  # the settings live with IKE's, which a driver reads without torch
    from ..methods.ike.config import NetConfig
from .device import resolve_device
from .grid import area_to_grid

# The network's forward passes run in bfloat16 on these devices (autocast; the losses, the optimiser's state
# and the predictions stay float32). bfloat16 has float32's range, so training needs no loss scaling.
HALF_PRECISION_DEVICES = ("cuda",)


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        # statistics learnt over the training batches and frozen at prediction
        self.norm1 = nn.BatchNorm2d(channels)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))


class SegNet(nn.Module):
    """U-Net-like: stem, two stride-2 stages, dilated bottleneck, skip-connected decoder, 1-channel logits."""

    def __init__(self, in_channels: int, width: int = 8) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), ResBlock(c1))
        self.down1 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(), ResBlock(c2))
        self.down2 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(),
                                   ResBlock(c3, 1), ResBlock(c3, 2), ResBlock(c3, 4))
        self.up2 = nn.Sequential(nn.Conv2d(c3 + c2, c2, 3, padding=1), nn.ReLU(), ResBlock(c2))
        self.up1 = nn.Sequential(nn.Conv2d(c2 + c1, c1, 3, padding=1), nn.ReLU(), ResBlock(c1))
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


def frame_inputs(frames: np.ndarray, hw: Tuple[int, int], motion: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The net's input (T,C,h,w) float32: RGB area-averaged on the (h,w) grid and standardised over
    the video, and optionally the motion maps (T,C',h,w) scaled to unit RMS."""
    rgb = area_to_grid(frames.astype(np.float32) / 255.0, hw)
    if motion is not None:
        rgb = rgb.to(motion.device)  # the frames, once, to where the motion maps already are
    parts = [(rgb - rgb.mean(dim=(0, 2, 3), keepdim=True)) / rgb.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)]
    if motion is not None:
        parts.append(motion / motion.pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt().clamp_min(1e-6))
    return torch.cat(parts, 1).contiguous()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, pooled over the whole batch.

    Per sample, a frame without object has Dice 1 - 1/(Σp + 1): ≈ 1 with a vanishing gradient until
    Σp < 1, a cliff rather than a signal."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + eps) / (p.sum() + target.sum() + eps)


def train_and_predict(
    inputs: torch.Tensor,
    soft_labels: torch.Tensor,
    threshold: float,
    cfg: "NetConfig",
    seed: int = 0,
    device: Optional[torch.device] = None,
) -> tuple[torch.Tensor, dict]:
    """Train a fresh SegNet on (T,C,h,w) inputs against (T,1,h,w) soft labels; predict every frame: (T,h,w)
    probabilities on ``device``.

    Binary labels are ``soft > threshold`` (the video's own K-means cut). The soft labels should be
    probabilities (above the threshold > 0.5): soft Dice lowers p wherever its target is below Dice/2, so
    a weak score above the threshold is taught as background by one term and as object by the other.
    Deterministic for a seed:
    its own generator for weights and batches, the global RNG state untouched.
    """
    device = device or resolve_device("auto")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SegNet(inputs.shape[1], cfg.width)
    hard = (soft_labels > threshold).float()
    # the head starts at the video's foreground rate (Lin et al., ICCV 2017, "prior" init): from a 0.5
    # start the background is driven down only as fast as Adam moves one bias (≈ lr per step)
    rate = float(hard.mean().clamp(0.01, 0.99))
    nn.init.constant_(net.head.bias, float(np.log(rate / (1 - rate))))
    # channels-last: the convolutions of so few channels run about a quarter faster on CPUs (oneDNN) and GPUs
    net = net.to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    x_all = inputs.to(device).contiguous(memory_format=torch.channels_last)
    hard_all = hard.to(device)
    # Dice target: the soft labels inside the object only. The graph's background is a low but
    # non-zero level over most of the frame; its summed mass can exceed the object's, and soft Dice
    # rewards p > 0 wherever its target is > 0, against the CE term's hard background.
    y_all = soft_labels.to(device) * hard_all
    t_len = inputs.shape[0]
    half = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type in HALF_PRECISION_DEVICES)
    losses = []
    net.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, t_len, (min(cfg.batch, t_len),), generator=gen).to(device)
        x, y, hard = x_all[idx], y_all[idx], hard_all[idx]
        if bool(torch.rand(1, generator=gen) < 0.5):  # horizontal flip: the object's side is not a cue
            x, y, hard = x.flip(-1), y.flip(-1), hard.flip(-1)
        with half:
            logits = net(x.contiguous(memory_format=torch.channels_last)).float()
        loss = (cfg.ce_weight * F.binary_cross_entropy_with_logits(logits, hard)
                + cfg.dice_weight * soft_dice_loss(logits, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())  # kept on the device: no host sync per step
        if len(losses) % 20 == 0:
            report("method", len(losses) / cfg.steps)
    net.eval()
    preds = []
    with torch.no_grad(), half:
        for s in range(0, t_len, 8):  # a few frames at a time: bounded activation memory
            preds.append(torch.sigmoid(net(x_all[s:s + 8]).float()))
    pred = torch.cat(preds)[:, 0]
    losses = torch.stack(losses).cpu().numpy()
    return pred, {"loss_start": float(np.mean(losses[:10])), "loss_end": float(np.mean(losses[-10:]))}
