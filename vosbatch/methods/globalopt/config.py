"""globalopt's settings (no torch here: a driver checks them without loading the maths)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass
class SpectralConfig:
    """Sec. 3.1: the per-frame affinity of Eq. 2 on a coarse grid and its second eigenvector."""

    grid_stride: int = 8  # working pixels per grid cell (>= 1)
    grid_size: Optional[Tuple[int, int]] = None  # a fixed (rows, cols) grid instead, e.g. (96, 96) for ViT-B/8 at 768 px
    alpha_psi: float = 0.1  # α_ψ, weight of appearance in Eq. 2 (>= 0)
    alpha_phi: float = 1.0  # α_φ, weight of each motion direction in Eq. 2 (>= 0)
    affinity_threshold: float = 0.0  # s of g_s in Eq. 2: affinities below it are cut, in [-1, 1]
    affinity_floor: float = 0.0  # the value a cut affinity takes (0: no edge)
    motion: str = "residual"  # φ: "residual" (flow minus the camera's homography) or "flow" (the flow as it is)
    flow_clip: Optional[float] = None  # clip flow components to ±this many pixels before they become φ
    motion_scale: float = 4.0  # third component of residual φ, in units of the frame's residual noise (> 0)
    pic_tol: float = 1e-6  # power iteration stops when the direction changes by less (1 - |cos|)
    pic_max_iter: int = 400  # power iteration cap
    pic_batch: int = 8  # frames per batched eigen-solve (bounds memory: pic_batch x nodes² floats)
    sharpness: float = 3.0  # slope of the soft initialisation around the cut, in eigenvector standard deviations


@dataclass
class OptimisationConfig:
    """Sec. 3.2: Eq. 1 over all frames of a window."""

    enabled: bool = True  # False: the initialisation is the output
    stride: int = 4  # working pixels per optimisation-grid cell (1: the working resolution)
    lam: float = 1.0  # λ, weight of the initialisation term (> 0)
    warp_weight: float = 1.0  # μ, weight of the warp terms (>= 0)
    coarse_to_fine: bool = False  # solve on the spectral grid first, then on this grid from that solution
    lbfgs_max_iter: int = 100  # L-BFGS iterations per grid


@dataclass
class GlobalOptConfig:
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    optimisation: OptimisationConfig = field(default_factory=OptimisationConfig)
    seed: int = 0  # RANSAC samples of the background fit and the power iteration's start

    def __post_init__(self) -> None:
        if self.spectral.motion not in ("residual", "flow"):
            raise ValueError(f"globalopt spectral.motion={self.spectral.motion!r}: choose residual or flow")


def feature_grid(work_hw: Tuple[int, int], cfg: GlobalOptConfig) -> Tuple[int, int]:
    """The spectral grid: the nodes of Eq. 2, where appearance features are computed."""
    if cfg.spectral.grid_size:
        return int(cfg.spectral.grid_size[0]), int(cfg.spectral.grid_size[1])
    s = cfg.spectral.grid_stride
    return max(2, work_hw[0] // s), max(2, work_hw[1] // s)
