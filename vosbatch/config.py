"""Run configuration: everything that changes the masks, hashed so resumed runs can skip work."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional


REFINEMENTS = ("fgs", "guided", "crf", "none")  # RunConfig.refine; implemented in postprocess.binarize
FLOW_RELIABILITY = ("none", "photometric", "photometric+fb")  # RunConfig.flow_reliability; see flow.reliability
# Fields added after runs were first stored, with the value that reproduces those runs: at that value a
# field is left out of the digest (old runs keep their hash), and a stored run.json without it gets it
# (a resumed old run goes on as it started, whatever today's default).
LEGACY_VALUES = {"appearance_net": False, "flow_height": 0, "stage_refine": None}


@dataclass
class RunConfig:
    method: str = "globalopt"
    # DIS down to the input's own grid (flow.dis): DAVIS val at 480 px against "dis" (medium, a grid 2x coarser),
    # J / F: IKE's output 0.706 / 0.667 -> 0.712 / 0.677, globalopt (crf) 0.641 / 0.628 -> 0.646 / 0.632, at ~4x
    # the flow's time (0.37 against 0.10 s per 480x854 pair on one core; README)
    flow: str = "dis-fine"
    features: str = "colour"
    feature_weights: Optional[str] = None  # local checkpoint for a ViT feature backend (DINO .pth layouts)
    work_height: int = 240  # frames are processed at this height (aspect kept); masks return at full size
    flow_weights: Optional[str] = None
    # flow is estimated at this height (aspect kept, never above the input's) and resized to the working grid;
    # 0: at the working height. DAVIS val, DIS at 480 against 240 (README): IKE cycle 1 J 0.590 -> 0.629 (through
    # the binarisation), globalopt 0.611 -> 0.630 (fgs); DIS costs ~0.15 s/frame there (0.04 at 240), RAFT-small on a CPU 6.4 (1.3)
    flow_height: int = 480
    flow_iters: int = 12  # refinement iterations of learned (RAFT) flow
    flow_reliability: str = "none"  # "none" | "photometric" | "photometric+fb"
    method_params: Dict[str, Any] = field(default_factory=dict)
    appearance_weight: float = 2.0  # weight of the per-video colour model's log-odds (0: off)
    appearance_net: bool = False  # a per-video net learns the soft masks from the frames and replaces them (postprocess.appearance)
    # edge-aware filter before binarising: "crf" (the fast global smoother, then a dense CRF) | "fgs" (the smoother alone)
    # | "guided" | "none". The CRF is the default: DAVIS val, DIS at 480 px, J / F: IKE 0.693 / 0.648 -> 0.704 / 0.667
    # (better in 18 of 20 videos), globalopt 0.630 / 0.605 -> 0.641 / 0.628, for 0.29 against 0.07 s/frame
    # per binarisation (README's ablation; ~0.45 in the IKE job, README)
    refine: str = "crf"
    # the refinement that scores a method's intermediate stages (stage_scores: IKE's cycles, globalopt's init) when
    # there is ground truth; None: ``refine``. The output's masks never change with it. With the CRF an IKE job
    # binarises six times per frame (the output and five stages, ~0.45 s each on a core); "fgs" scores the stages
    # with the smoother alone: binarisation 0.8-0.9 against 3.0-3.7 s/frame per worker (DAVIS car-shadow, libby), the
    # stages' J 0.012-0.024 lower (DAVIS val, README)
    stage_refine: Optional[str] = None
    window_frames: int = 100  # longer videos are segmented in windows of this many frames: memory stays bounded
    window_overlap: int = 16  # frames shared by consecutive windows (the stitch switches at their middle)
    refine_from: Optional[str] = None  # a run or DAVIS-layout PNG folder whose masks the method refines
    device: str = "auto"
    seed: int = 0

    @classmethod
    def from_stored(cls, stored: Dict[str, Any]) -> "RunConfig":
        """The configuration of a stored run (``run.json``), fields it predates at their :data:`LEGACY_VALUES`."""
        return cls(**{**LEGACY_VALUES, **stored})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of what determines the output (not where it goes). A field added later is left
        out while it holds its :data:`LEGACY_VALUES` entry, so runs stored before it existed keep their hash (resume)."""
        d = self.to_dict()
        for name, default in LEGACY_VALUES.items():
            if d.get(name) == default:
                d.pop(name)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def method_digest(self) -> str:
        """Stable hash of what determines the method's soft masks, not their binarisation (colour model,
        appearance net, refinement): the key of a cache of soft masks that stays valid across those.
        The list format is that of the first such caches; later fields join only away from the value
        those caches were made with, so they keep their key."""
        parts: List[Any] = [self.method, self.flow, self.flow_weights, self.flow_iters, self.features, self.feature_weights,
                            self.work_height, self.method_params, self.seed]
        if self.flow_height:
            parts.append(self.flow_height)
        later = {k: getattr(self, k) for k, before in (("flow_reliability", "none"), ("refine_from", None)) if getattr(self, k) != before}
        if later:
            parts.append(later)
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
