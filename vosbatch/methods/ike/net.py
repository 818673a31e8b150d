"""The network half of IKE: a small U-Net trained from scratch, per video, on the graph's output.

The graph sees motion along chains but no appearance; a network trained on its soft masks learns
what the object *looks like* in this video and so fills in where motion is ambiguous (the object
stops, the background moves). It is a pseudo-label student: binarised labels for cross-entropy and
the soft labels for Dice, L = λ1·CE + λ2·Dice with λ1 = λ2 = 0.5 (paper), AdamW.

Size: residual blocks at three scales with dilated convolutions at the coarsest one (a wide
receptive field without more down-sampling), 8/16/32 channels by default, trained at the graph's
resolution: a DAVIS video trains in tens of seconds on 2 CPU cores, and on the GPU when there is one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm1 = nn.GroupNorm(min(4, channels), channels)
        self.norm2 = nn.GroupNorm(min(4, channels), channels)

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


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    return (1 - (2 * inter + eps) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + eps)).mean()


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

    Binary labels are ``soft > threshold`` (the video's own K-means cut). Deterministic for a seed:
    its own generator for weights and batches, the global RNG state untouched.
    """
    device = device or pick_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SegNet(inputs.shape[1], cfg.width)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = inputs.to(device), soft_labels.to(device)
    hard_all = (y_all > threshold).float()
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
        loss = cfg.ce_weight * F.binary_cross_entropy_with_logits(logits, hard) + cfg.dice_weight * soft_dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, t_len, 8):  # a few frames at a time: bounded activation memory
            preds.append(torch.sigmoid(net(x_all[s:s + 8])).cpu())
    pred = torch.cat(preds)[:, 0].numpy().astype(np.float32)
    return pred, {"loss_start": float(np.mean(losses[:10])), "loss_end": float(np.mean(losses[-10:]))}
