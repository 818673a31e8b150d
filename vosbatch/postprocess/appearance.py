"""Per-video appearance models: let the object's looks decide where motion is silent.

Motion finds the object only where it moves differently from the background; parts that move
little, or frames where flow fails, are missed, and mask edges sit on a coarse grid. The object's
*appearance* is shared across the video, so a model learnt from the method's own masks fills those
gaps. Two, from cheap to costly:

- the **colour model** (always on by default): P(fg | colour) from two Lab histograms of the
  confident pixels of all frames (as in Papazoglou & Ferrari, ICCV 2013), combined with the soft
  mask by adding log-odds; a second round relearns the model from the combined masks;
- the **appearance net** (``--appearance-net``): a small U-Net trained from scratch on the video's
  frames against the soft masks (:mod:`vosbatch.ops.segnet`, IKE's network module) whose
  predictions replace them, at twice the method grid's resolution, so shape, texture and place in
  the frame count as well as colour. Off by default: on DAVIS val it helped some videos and hurt
  more (README's ablation table).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..ops.segnet import NetConfig, frame_inputs, train_and_predict


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def colour_posterior(frames: np.ndarray, soft: np.ndarray, bins: int = 16, confident: float = 0.25,
                     prior: float = 1.0) -> np.ndarray:
    """P(foreground | Lab colour) per pixel, from histograms of pixels with soft > 1-c and < c."""
    lab = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB) for f in frames])
    q = (lab.astype(np.int32) * bins) >> 8
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    fg = np.bincount(idx[soft > 1 - confident], minlength=bins**3) + prior  # Laplace smoothing
    bg = np.bincount(idx[soft < confident], minlength=bins**3) + prior
    fg, bg = fg / fg.sum(), bg / bg.sum()
    return (fg / (fg + bg))[idx].astype(np.float32)


def colour_model_refine(frames: np.ndarray, soft: np.ndarray, weight: float = 2.0, rounds: int = 2) -> np.ndarray:
    """Soft masks (T,H,W) combined with the video's colour model: σ(logit(soft) + w·logit(P(fg|c))).

    ``weight`` 2 and 2 rounds were chosen on 7 DAVIS val sequences (first 40 frames): J 0.427 ->
    0.487; weight 1 gave 0.459.
    """
    if weight <= 0 or rounds <= 0:
        return soft
    base = _logit(soft)
    current = soft
    for _ in range(rounds):
        current = 1.0 / (1.0 + np.exp(-(base + weight * _logit(colour_posterior(frames, current)))))
    return current.astype(np.float32)


@dataclass
class AppearanceNetConfig:
    """The appearance net's settings. 300 steps and the coordinate planes were chosen on 4 DAVIS val
    sequences (RAFT-small, globalopt): with 150 steps and no coordinates one video (breakdance) lost
    its object (J 0.63 -> 0.45). On the whole val set it is off by default: J 0.618 -> 0.609 with the
    CRF (README's ablation table), better on camel/blackswan, worse on thin parts (soapbox)."""

    upscale: int = 2  # the net's grid: this many times the soft masks' grid (capped at the frames' size)
    steps: int = 300
    width: int = 8
    coords: bool = True  # (y, x) planes as inputs, see segnet.frame_inputs


def appearance_net(frames: np.ndarray, soft: np.ndarray, cfg: AppearanceNetConfig | None = None,
                   seed: int = 0) -> np.ndarray:
    """Soft masks (T,h,w) -> the appearance net's masks (T,h',w') on a grid ``upscale`` times finer.

    The binarised labels are the soft masks at the video's K-means cut (as IKE's net learns from the
    graph). ``frames`` (T,H,W,3) uint8 at any resolution >= the net's grid."""
    from .binarize import kmeans_threshold  # binarize imports this module

    cfg = cfg or AppearanceNetConfig()
    t_len, h, w = soft.shape
    H, W = frames.shape[1:3]
    hw = (min(H, h * cfg.upscale), min(W, w * cfg.upscale))
    labels = F.interpolate(torch.from_numpy(np.ascontiguousarray(soft, np.float32))[:, None], size=hw,
                           mode="bilinear", align_corners=False).clamp(0, 1)
    cut = kmeans_threshold(labels.numpy(), seed=seed)
    net_cfg = NetConfig(width=cfg.width, steps=cfg.steps)
    pred, _ = train_and_predict(frame_inputs(frames, hw, coords=cfg.coords), labels, cut, net_cfg, seed=seed + 1)
    return pred
