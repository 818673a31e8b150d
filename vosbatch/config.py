"""Run configuration: everything that changes the masks, hashed so resumed runs can skip work."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional


REFINEMENTS = ("fgs", "guided", "crf", "none")  # RunConfig.refine; implemented in postprocess.binarize
FLOW_RELIABILITY = ("none", "photometric", "photometric+fb")  # RunConfig.flow_reliability; see flow.reliability
_LATER_FIELDS = {"appearance_net": False, "flow_height": None}  # fields added after runs were stored, at their defaults


@dataclass
class RunConfig:
    method: str = "globalopt"
    flow: str = "dis"
    features: str = "colour"
    feature_weights: Optional[str] = None  # local checkpoint for a ViT feature backend (DINO .pth layouts)
    work_height: int = 240  # frames are processed at this height (aspect kept); masks return at full size
    flow_weights: Optional[str] = None
    # flow is computed at this height (aspect kept, never upsampling) and resized to the working grid;
    # None: at the working height. Learned flow sees 1/8 of its input's pixels, so small objects need more
    flow_height: Optional[int] = None
    flow_iters: int = 12  # refinement iterations of learned (RAFT) flow
    flow_reliability: str = "none"  # "none" | "photometric" | "photometric+fb"
    method_params: Dict[str, Any] = field(default_factory=dict)
    appearance_weight: float = 2.0  # weight of the per-video colour model's log-odds (0: off)
    appearance_net: bool = False  # a per-video net learns the soft masks from the frames and replaces them (postprocess.appearance)
    refine: str = "fgs"  # edge-aware filter before binarising: "fgs" (fast global smoother) | "guided" | "crf" (+ dense CRF, the crf extra) | "none"
    window_frames: int = 100  # longer videos are segmented in windows of this many frames: memory stays bounded
    window_overlap: int = 16  # frames shared by consecutive windows (the stitch switches at their middle)
    refine_from: Optional[str] = None  # a run or DAVIS-layout PNG folder whose masks the method refines
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of what determines the output (not where it goes). A field added later is left
        out while it holds its default, so runs stored before it existed keep their hash (resume)."""
        d = self.to_dict()
        for name, default in _LATER_FIELDS.items():
            if d.get(name) == default:
                d.pop(name)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_method_params(items: Iterable[str]) -> Dict[str, Any]:
    """``["lam=1", "optimise=false", "split=ncut"]`` -> {"lam": 1, "optimise": False, "split": "ncut"}:
    JSON values, else strings (the ``-p KEY=VALUE`` options of the CLI and the jobs)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
