"""Self-supervised ViT features (DINO, DINOv2) through timm.

The backend resizes each frame so both sides are multiples of the patch size (by default so the
token grid *is* the requested grid; timm's ``dynamic_img_size`` interpolates the position
embeddings), runs the ViT and returns, per patch token, either the last block's attention **keys**
(what Ponimatkin et al. use: a forward hook on ``blocks[-1].attn.qkv``, heads merged) or the output
tokens. Prefix tokens (CLS / registers) are dropped, the token map is resized to the requested grid
(area when shrinking, bilinear otherwise) and every feature vector is L2-normalised.

Weights never come from the network unless asked: ``weights`` is a local checkpoint (official DINO /
DINOv2 ``.pth`` layouts, see :func:`load_vit_checkpoint`); ``pretrained=True`` with no ``weights``
downloads timm's copy. With neither the model is randomly initialised (deterministically, from
``seed``) — fine for tests and timing, meaningless as appearance features.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..ops.device import resolve_device
from .base import FeatureBackend, register_features

log = logging.getLogger(__name__)

VIT_MODELS: Dict[str, str] = {
    "dino-vits16": "vit_small_patch16_224.dino",
    "dino-vits8": "vit_small_patch8_224.dino",
    "dino-vitb16": "vit_base_patch16_224.dino",
    "dino-vitb8": "vit_base_patch8_224.dino",
    "dinov2-vits14": "vit_small_patch14_dinov2.lvd142m",
}

_WRAPPERS = ("teacher", "student", "model", "state_dict")  # official DINO / common training layouts
_PREFIXES = ("module.", "backbone.", "_orig_mod.")  # DDP, DINO's MultiCropWrapper, torch.compile


class FeatureCheckpointError(ValueError):
    """A weights file that cannot be loaded into the requested ViT (names the file and why)."""


def build_vit(model_name: str, pretrained: bool = False) -> torch.nn.Module:
    import timm

    return timm.create_model(model_name, pretrained=pretrained, num_classes=0, dynamic_img_size=True)


def _arch_summary(sd: Dict[str, torch.Tensor]) -> str:
    parts = []
    ref = sd.get("cls_token", sd.get("patch_embed.proj.weight"))
    if ref is not None:
        parts.append(f"embed {ref.shape[-1] if ref.ndim == 3 else ref.shape[0]}")
    pw = sd.get("patch_embed.proj.weight")
    if pw is not None and pw.ndim == 4:
        parts.append(f"patch {pw.shape[-1]}")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.") and k.count(".") >= 2})
    if depth:
        parts.append(f"depth {depth}")
    return ", ".join(parts) or "no recognisable ViT keys"


def _model_family(model: torch.nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") or type(model).__name__
    return "_".join(arch.split("_")[:2]) if arch.startswith("vit_") else arch


def _extract_state_dict(obj, path: str) -> Dict[str, torch.Tensor]:
    seen = 0
    while isinstance(obj, dict) and seen < 4:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise FeatureCheckpointError(
        f"{path}: no ViT state dict found (expected a dict of tensors, possibly under one of "
        f"{'/'.join(_WRAPPERS)}); top level holds {keys}"
    )


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def load_vit_checkpoint(model: torch.nn.Module, path: Union[str, os.PathLike]) -> torch.nn.Module:
    """Load a local DINO/DINOv2 checkpoint into a timm ViT backbone (strictly) and return the model.

    Accepts a plain state dict or one under ``teacher`` / ``student`` / ``model`` / ``state_dict``
    (DINO's full training checkpoints), strips ``module.`` / ``backbone.`` prefixes, drops head keys
    (``head.*``) and DINOv2's ``mask_token`` when the backbone has none, then loads with
    ``strict=True``. Anything else raises :class:`FeatureCheckpointError` naming the file.
    """
    path = os.fspath(path)
    try:
        # weights_only: no code runs from the file; DINO's full checkpoints also pickle their argparse args
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a loadable checkpoint"
        raise FeatureCheckpointError(f"{path}: not a PyTorch checkpoint (torch.load failed: {type(e).__name__}: {e})") from e
    raw = _extract_state_dict(obj, path)
    expected = model.state_dict()
    sd: Dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        k = _strip(k)
        if k not in expected and (k.startswith("head.") or k == "mask_token"):
            continue  # DINO projection head / DINOv2 masking token: not part of the backbone
        sd[k] = v
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shape_bad = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shape_bad:
        lines = [f"{path}: checkpoint does not fit {_model_family(model)} ({_arch_summary(expected)}); file has {_arch_summary(sd)}"]
        emb_m = getattr(model, "embed_dim", None)
        ref = sd.get("cls_token")
        if emb_m is not None and ref is not None and ref.shape[-1] != emb_m:
            lines.append(f"expects {_model_family(model)} (embed {emb_m}), file has {ref.shape[-1]}")
        if shape_bad:
            ex = ", ".join(f"{k}: model {tuple(expected[k].shape)} vs file {tuple(sd[k].shape)}" for k in shape_bad[:3])
            lines.append(f"{len(shape_bad)} shape mismatch(es), e.g. {ex}")
        if missing:
            lines.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:5])}")
        raise FeatureCheckpointError("; ".join(lines))
    model.load_state_dict(sd, strict=True)
    return model


def _round_to(x: float, p: int) -> int:
    return max(p, int(round(x / p)) * p)


class ViTFeatures(FeatureBackend):
    """DINO / DINOv2 ViT features on a coarse grid: ``(T,H,W,3) uint8 -> (T,h,w,C) float32``, unit norm."""

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224.dino",
        weights: Optional[str] = None,
        pretrained: bool = False,
        output: str = "keys",
        image_size: Union[None, int, Sequence[int]] = None,
        batch_size: int = 8,
        device: str = "auto",
        fp16: bool = True,
        seed: int = 0,
        name: Optional[str] = None,
    ) -> None:
        if output not in ("keys", "tokens"):
            raise ValueError(f"output must be 'keys' or 'tokens', got {output!r}")
        self.name = name or model_name
        self.model_name = model_name
        self.output = output
        self.image_size = image_size
        self.batch_size = max(1, int(batch_size))
        self.device = resolve_device(device)
        self.fp16 = bool(fp16) and self.device.type == "cuda"
        if weights is not None:
            model = build_vit(model_name, pretrained=False)
            load_vit_checkpoint(model, weights)
        elif pretrained:
            model = build_vit(model_name, pretrained=True)  # timm hub download (users' machines only)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_vit(model_name, pretrained=False)
            log.warning("%s: no weights given, randomly initialised (features carry no learned appearance)", self.name)
        self.weights = weights
        self.model = model.eval().to(self.device)
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=self.model)
        self._mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        ps = self.model.patch_embed.patch_size
        self.patch = (int(ps[0]), int(ps[1])) if isinstance(ps, (tuple, list)) else (int(ps), int(ps))
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 1))
        self.embed_dim = int(self.model.embed_dim)

    # ------------------------------------------------------------------ geometry
    def input_size(self, frame_hw: Tuple[int, int], grid: Tuple[int, int]) -> Tuple[int, int]:
        """Network input (H, W), both multiples of the patch size."""
        ph, pw = self.patch
        if self.image_size is None:  # one token per grid cell
            return grid[0] * ph, grid[1] * pw
        if isinstance(self.image_size, int):  # shorter side ≈ image_size, aspect of the frames
            H, W = frame_hw
            s = self.image_size / min(H, W)
            return _round_to(H * s, ph), _round_to(W * s, pw)
        return _round_to(self.image_size[0], ph), _round_to(self.image_size[1], pw)

    def preprocess(self, frames: np.ndarray, size: Tuple[int, int]) -> torch.Tensor:
        """(B,H,W,3) uint8 RGB -> (B,3,h,w) float32, resized and mean/std normalised, on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self._mean) / self._std

    # ------------------------------------------------------------------ inference
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B,h,w,C) patch features (keys or tokens), float32, not normalised."""
        captured = {}
        handle = None
        if self.output == "keys":
            handle = self.model.blocks[-1].attn.qkv.register_forward_hook(
                lambda mod, inp, out: captured.__setitem__("qkv", out)
            )
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
                tokens = self.model.forward_features(x)
        finally:
            if handle is not None:
                handle.remove()
        B = x.shape[0]
        C = self.embed_dim
        if self.output == "keys":
            qkv = captured["qkv"]  # (B, N, 3C): timm splits it as (3, heads, head_dim)
            q_k_v = qkv.reshape(B, qkv.shape[1], 3, C)  # heads merged: [..., h*head_dim]
            feats = q_k_v[:, :, 1]
        else:
            feats = tokens
        feats = feats[:, self.num_prefix_tokens:].float()
        h, w = x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]
        return feats.reshape(B, h, w, -1)

    @staticmethod
    def _to_grid(feats: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if tuple(feats.shape[1:3]) == tuple(grid):
            return feats
        f = feats.permute(0, 3, 1, 2)
        if f.shape[-2] >= grid[0] and f.shape[-1] >= grid[1]:
            f = F.adaptive_avg_pool2d(f, grid)  # area
        else:
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        return f.permute(0, 2, 3, 1)

    def __call__(self, frames: np.ndarray, grid: Tuple[int, int]) -> torch.Tensor:
        """(T,H,W,3) uint8 RGB -> (T,h,w,C) float32 unit features, left on the model's device (the method
        that uses them runs there too)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T,H,W,3) RGB, got {frames.shape}")
        grid = (int(grid[0]), int(grid[1]))
        size = self.input_size(frames.shape[1:3], grid)
        out = torch.empty((len(frames), grid[0], grid[1], self.embed_dim), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for s in range(0, len(frames), self.batch_size):
                x = self.preprocess(frames[s:s + self.batch_size], size)
                f = self._to_grid(self._forward(x), grid)
                out[s:s + len(x)] = F.normalize(f, dim=-1)
        return out


def _factory(alias: str):
    def make(**kwargs) -> ViTFeatures:
        kwargs.setdefault("name", alias)
        return ViTFeatures(VIT_MODELS[alias], **kwargs)

    return make


for _alias in VIT_MODELS:
    register_features(_alias)(_factory(_alias))
