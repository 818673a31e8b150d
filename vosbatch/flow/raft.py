"""RAFT optical flow (Teed & Deng, ECCV 2020): torchvision's ``raft_small`` / ``raft_large``, built
untrained, plus a key map that loads the authors' official checkpoints (``raft-small.pth`` ...) strictly.
torchvision's model reproduces the official outputs (1e-5 px mean end-point difference on RAFT-small),
so this package no longer maintains its own copy of the architecture.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_large, raft_small
from torchvision.models.optical_flow.raft import RAFT, CorrBlock

from .base import FlowBackend, register_flow

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The model: torchvision's, with the official interface (0..255 in, final flow out).
# ---------------------------------------------------------------------------------------------


class _FP32CorrBlock(CorrBlock):
    """Correlation volume and lookups in float32 even under fp16 autocast: the official
    ``--mixed_precision`` mode casts the features to float32 before building the volume."""

    def build_pyramid(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> None:
        with torch.autocast(fmap1.device.type, enabled=False):
            super().build_pyramid(fmap1.float(), fmap2.float())

    def index_pyramid(self, centroids_coords: torch.Tensor) -> torch.Tensor:
        with torch.autocast(centroids_coords.device.type, enabled=False):
            return super().index_pyramid(centroids_coords.float())


def build_raft(small: bool) -> RAFT:
    """Untrained torchvision RAFT-small or RAFT (large); weights come from :func:`load_checkpoint`."""
    if small:
        return raft_small(weights=None, progress=False, corr_block=_FP32CorrBlock(num_levels=4, radius=3))
    return raft_large(weights=None, progress=False, corr_block=_FP32CorrBlock(num_levels=4, radius=4))


def estimate_flow(model: RAFT, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12,
                  mixed_precision: bool = False) -> torch.Tensor:
    """Final full-resolution flow (N,2,H,W), channel 0 = x, from images (N,3,H,W) in 0..255 with H
    and W multiples of 8, as the official model in test mode: torchvision's expects [-1, 1] and
    returns the flow after every iteration."""
    image1 = (2 * (image1 / 255.0) - 1.0).contiguous()
    image2 = (2 * (image2 / 255.0) - 1.0).contiguous()
    with torch.autocast(image1.device.type, dtype=torch.float16, enabled=mixed_precision):
        return model(image1, image2, num_flow_updates=iters)[-1].float()


class InputPadder:
    """Replicate-pad to a multiple of 8, centred ("sintel" mode of the official InputPadder).

    ``min_size`` additionally pads small images up to the 128 px torchvision's RAFT needs (its
    coarsest correlation level must be at least 2x2 at 1/64 resolution).
    """

    def __init__(self, height: int, width: int, min_size: int = 128) -> None:
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
# Checkpoints: the official names mapped onto torchvision's, strict loading; where to find them.
# ---------------------------------------------------------------------------------------------

# torchvision name -> official name, applied in order (``{gru}`` is the full model's GRU index).
_TO_OFFICIAL = (
    (r"^feature_encoder\.", "fnet."),
    (r"^context_encoder\.", "cnet."),
    (r"^(.net)\.convnormrelu\.0\.", r"\1.conv1."),  # stem
    (r"^(.net)\.convnormrelu\.1\.", r"\1.norm1."),
    (r"\.convnormrelu(\d)\.0\.", r".conv\1."),  # residual / bottleneck blocks
    (r"\.convnormrelu(\d)\.1\.", r".norm\1."),
    (r"^(.net)\.conv\.", r"\1.conv2."),  # output projection
    (r"^update_block\.motion_encoder\.convcorr(\d)\.0\.", r"update_block.encoder.convc\1."),
    (r"^update_block\.motion_encoder\.convflow(\d)\.0\.", r"update_block.encoder.convf\1."),
    (r"^update_block\.motion_encoder\.conv\.0\.", "update_block.encoder.conv."),
    (r"^update_block\.recurrent_block\.convgru(\d)\.conv(.)\.", r"update_block.gru.conv\2{gru}."),
    (r"^mask_predictor\.convrelu\.0\.", "update_block.mask.0."),
    (r"^mask_predictor\.conv\.", "update_block.mask.2."),
)


def official_key_map(model: RAFT) -> Dict[str, str]:
    """Official checkpoint name -> torchvision state-dict name, covering every tensor of ``model``.

    The authors register the stride-2 blocks' projection norm twice (``norm3``/``norm4`` and
    ``downsample.1``), so batch-norm checkpoints hold it under both names; both map to one tensor.
    """
    small = model.mask_predictor is None  # RAFT-small upsamples bilinearly, without a mask head
    rules = [(re.compile(p), r.replace("{gru}", "" if small else r"\1")) for p, r in _TO_OFFICIAL]
    alias = re.compile(r"^(.net\.layer\d\.0)\.downsample\.1\.")
    out = {}
    for name in model.state_dict():
        official = name
        for pattern, repl in rules:
            official = pattern.sub(repl, official)
        out[official] = name
        if alias.match(official):
            out[alias.sub(rf"\1.norm{4 if small else 3}.", official)] = name
    return out


#: The authors' archive of trained models (``models/raft-small.pth``, ``models/raft-things.pth`` ...).
RAFT_MODELS_URL = "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip"
#: Archive member used per backend.
CHECKPOINT_FILES = {"raft-small": "raft-small.pth", "raft": "raft-things.pth"}
#: Known digests of archive members, checked when downloading from the official URL.
KNOWN_SHA256 = {"raft-small.pth": "c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332"}


class RAFTCheckpointError(ValueError):
    """The weights file is not a checkpoint, or not one of this architecture. The message names it."""


def load_checkpoint(model: RAFT, path: Union[str, Path]) -> RAFT:
    """Load an official RAFT state dict (``module.`` prefixes stripped) into torchvision's ``model``
    strictly: every official key present and mapped, no other key, every shape equal."""
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
    key_map, expected = official_key_map(model), model.state_dict()
    missing = sorted(set(key_map) - set(state))
    unexpected = sorted(set(state) - set(key_map))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[key_map[k]].shape)}" for k in key_map
             if k in state and state[k].shape != expected[key_map[k]].shape]
    mapped, differing = {}, []
    if not (missing or unexpected or wrong):
        for k, v in state.items():
            if key_map[k] in mapped and not torch.equal(mapped[key_map[k]], v):
                differing.append(k)  # the two names of one shared module disagree
            mapped.setdefault(key_map[k], v)
    if missing or unexpected or wrong or differing:
        kind = "RAFT-small" if model.mask_predictor is None else "RAFT (full)"

        def few(items):
            return ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")

        problems = [f"{label}: {few(items)}" for label, items in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong),
                     ("differs from its duplicate", differing)) if items]
        raise RAFTCheckpointError(f"{path} does not match the {kind} architecture; " + "; ".join(problems))
    model.load_state_dict(mapped, strict=True)
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
        self.model = load_checkpoint(build_raft(small), self.weights).eval().to(self.device)
        self.mixed_precision = self.device.type == "cuda" if mixed_precision is None else bool(mixed_precision)
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
                flow = estimate_flow(self.model, im1, im2, self.iters, self.mixed_precision)
                out[i : i + len(flow)] = padder.unpad(flow).permute(0, 2, 3, 1).cpu().numpy()
        return out


@register_flow("raft-small")
def _raft_small(weights: Optional[str] = None, iters: int = 12, device="auto", **kwargs) -> RAFTFlow:
    return RAFTFlow(small=True, weights=weights, iters=iters, device=device, **kwargs)


@register_flow("raft")
def _raft_full(weights: Optional[str] = None, iters: int = 12, device="auto", **kwargs) -> RAFTFlow:
    return RAFTFlow(small=False, weights=weights, iters=iters, device=device, **kwargs)
