"""Per-pixel maps onto a method's coarse grid (the spectral grid, the optimisation grid, IKE's graph)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F


def area_to_grid(maps: np.ndarray, hw: Tuple[int, int]) -> torch.Tensor:
    """Area-average (T,H,W[,C]) maps onto an (h,w) grid -> (T,C,h,w) float32.

    NaN marks a missing value (e.g. unreliable flow): each cell averages its finite values and is NaN
    only where fewer than half of them are finite, so a few missing pixels do not erase a cell.
    """
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    if t.ndim == 3:
        t = t[..., None]
    t = t.permute(0, 3, 1, 2)
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return F.adaptive_avg_pool2d(t, hw).contiguous()
    num = F.adaptive_avg_pool2d(torch.nan_to_num(t), hw)
    den = F.adaptive_avg_pool2d(finite.float(), hw)
    out = num / den.clamp_min(1e-6)
    out[den < 0.5] = float("nan")
    return out


def bilinear_resize(stack: Union[np.ndarray, torch.Tensor], hw: Tuple[int, int],
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """Bilinear resampling of a (T,h,w) stack (soft masks, logits) to (T,*hw), keeping its dtype; on ``device``
    (default: where the stack is; an array becomes a CPU tensor)."""
    t = stack if torch.is_tensor(stack) else torch.from_numpy(np.ascontiguousarray(stack))
    if device is not None:
        t = t.to(device)
    return F.interpolate(t[:, None], size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]
