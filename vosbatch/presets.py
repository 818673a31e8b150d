"""Named configurations (``--preset``), so users pick a whole recipe instead of a dozen flags.

A preset is a set of :class:`~vosbatch.config.RunConfig` values over the dataclass defaults; options
given explicitly override it (``-p`` method parameters merge into its ``method_params``). Measured
quality and cost of each preset: README's results table and docs/benchmarks.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from .config import RunConfig, merge_params


@dataclass(frozen=True)
class Preset:
    summary: str  # one line for --help and the report
    settings: Dict[str, Any] = field(default_factory=dict)  # RunConfig fields over the defaults
    per_dataset: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # further settings for one dataset


PRESETS: Dict[str, Preset] = {
    "balanced": Preset("globalopt with DIS flow at 480 px and the dense CRF: the configuration's defaults"),
    "quality": Preset("IKE (space-time graph + a network trained per video, 3 cycles), about twice balanced's time per frame",
                      {"method": "ike"}),
    "fast": Preset("globalopt with DIS medium flow and the fast global smoother instead of the CRF",
                   {"flow": "dis", "refine": "fgs"}),
    # Ponimatkin et al.'s recipe for ViT features, from their code (ponimatkin/ssl-vos) where it and the paper
    # differ; docs/methods.md lists each value, its source, and what this implementation does differently.
    "paper-globalopt": Preset(
        "globalopt as Ponimatkin et al. publish it for DINO ViT-B/8 features (needs the DINO weights: --weights)",
        {"features": "dino-vitb8", "work_height": 480, "appearance_weight": 0.0, "refine": "crf",
         "method_params": {
             "spectral": {"grid_size": [96, 96], "alpha_psi": 1.0, "alpha_phi": 0.1, "affinity_threshold": 0.3,
                          "affinity_floor": 1e-6, "motion": "flow", "flow_clip": 30.0, "pic_tol": 1e-6, "pic_batch": 2},
             "optimisation": {"stride": 1, "lam": 1.0, "warp_weight": 0.01, "coarse_to_fine": True}}},
        per_dataset={"fbms59": {"method_params": {"optimisation": {"lam": 0.1}}}}),
}
DEFAULT_PRESET = "balanced"


def preset_config(name: Optional[str] = None, dataset: Optional[str] = None,
                  overrides: Optional[Mapping[str, Any]] = None) -> RunConfig:
    """The RunConfig of preset ``name`` (default :data:`DEFAULT_PRESET`) for ``dataset``, with ``overrides``
    (RunConfig fields; ``method_params`` merged, not replaced)."""
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    values: Dict[str, Any] = {"preset": name}
    for layer in (preset.settings, preset.per_dataset.get(dataset or "", {}), overrides or {}):
        for key, value in layer.items():
            if key == "method_params":
                value = merge_params(values.get("method_params", {}), value)
            values[key] = value
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown run setting(s) {', '.join(unknown)}")
    return RunConfig(**values)
