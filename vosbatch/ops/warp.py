"""Backward warping with dense flow.

To bring a quantity living on frame *s* onto frame *t*, sample it at ``q + flow_{t->s}(q)`` for
every pixel q of frame t ("backward warping"): every target pixel gets exactly one value and the
operation is differentiable in the warped quantity. Pixels whose sample point leaves the image are
reported as invalid so callers can drop them instead of trusting a border value.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """Normalised grid for ``grid_sample`` from flow (N,H,W,2) in pixels of the same grid.

    Uses ``align_corners=True`` coordinates: pixel centres at -1 ... 1, so pixel i maps to
    ``2 i / (W-1) - 1`` exactly.
    """
    n, h, w, _ = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype, device=flow.device),
        torch.arange(w, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    x = xs + flow[..., 0]
    y = ys + flow[..., 1]
    gx = 2.0 * x / max(w - 1, 1) - 1.0
    gy = 2.0 * y / max(h - 1, 1) - 1.0
    return torch.stack([gx, gy], dim=-1)


def backward_warp(source: torch.Tensor, flow_target_to_source: torch.Tensor, mode: str = "bilinear"):
    """Warp ``source`` (N,C,H,W) onto the target frame using the flow target->source (N,H,W,2).

    Returns ``(warped, valid)`` where ``valid`` (N,1,H,W) is 1 where the sample point lies inside
    the source image.
    """
    grid = sampling_grid(flow_target_to_source.to(source.dtype))
    warped = F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=True)
    inside = (grid.abs() <= 1.0).all(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    return warped, inside.to(source.dtype)


def photometric_error(source: torch.Tensor, target: torch.Tensor, flow_target_to_source: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean absolute difference between ``target`` and ``source`` warped onto it.

    Images (N,C,H,W) in any consistent range; returns (N,H,W). Used to judge how much a flow field
    can be trusted (flow-quality masking).
    """
    warped, _ = backward_warp(source, flow_target_to_source)
    return (warped - target).abs().mean(dim=1)
