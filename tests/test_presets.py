"""Presets: whole configurations by name, explicit settings on top, and the authors' recipe for ViT features."""
import dataclasses

import pytest

from vosbatch.config import RunConfig
from vosbatch.methods import get_method
from vosbatch.presets import DEFAULT_PRESET, PRESETS, preset_config


def test_presets_are_run_configs_over_the_defaults():
    assert preset_config() == dataclasses.replace(RunConfig(), preset=DEFAULT_PRESET)
    assert preset_config("quality").method == "ike"
    fast = preset_config("fast")
    assert (fast.method, fast.flow, fast.refine) == ("globalopt", "dis", "fgs")
    for name in PRESETS:  # every preset's method settings are valid
        cfg = preset_config(name)
        get_method(cfg.method).config(cfg.method_params)
    with pytest.raises(ValueError, match="unknown preset 'best'"):
        preset_config("best")


def test_explicit_settings_override_a_preset_and_merge_into_its_method_settings():
    cfg = preset_config("paper-globalopt", overrides={"work_height": 240, "method_params": {"optimisation": {"lam": 2.0}}})
    settings = get_method("globalopt").config(cfg.method_params)
    assert cfg.work_height == 240 and cfg.features == "dino-vitb8" and cfg.preset == "paper-globalopt"
    assert settings.optimisation.lam == 2.0 and settings.optimisation.warp_weight == 0.01  # the rest stays the preset's


def test_paper_globalopt_gets_the_authors_values_and_their_96_grid():
    """Ponimatkin et al.'s recipe for ViT features (their code, ponimatkin/ssl-vos): DINO ViT-B/8 keys of the last
    block on 768x768 frames (a 96x96 token grid), affinity (cos ψ + 0.1 cos φ⁺ + 0.1 cos φ⁻) / 1.2 with edges below
    0.3 at 1e-6, flow clipped to ±30 px, power iteration to 1e-6, Eq. 1 with weights 1 / 0.01 (0.1 / 0.01 on FBMS-59)
    on the 96 grid, then at full resolution. The ViT here is randomly initialised (no DINO weights offline)."""
    from vosbatch.features.vit import ViTFeatures
    from vosbatch.pipeline import VideoSegmenter

    cfg = preset_config("paper-globalopt", "davis2016")
    assert (cfg.method, cfg.features, cfg.work_height, cfg.appearance_weight, cfg.refine) == \
        ("globalopt", "dino-vitb8", 480, 0.0, "crf")
    seg = VideoSegmenter(cfg)
    sp, op = seg.method_cfg.spectral, seg.method_cfg.optimisation
    assert (sp.alpha_psi, sp.alpha_phi, sp.affinity_threshold, sp.affinity_floor) == (1.0, 0.1, 0.3, 1e-6)
    assert (sp.motion, sp.flow_clip, sp.pic_tol) == ("flow", 30.0, 1e-6)
    assert (op.lam, op.warp_weight, op.stride, op.coarse_to_fine, op.enabled) == (1.0, 0.01, 1, True, True)
    assert isinstance(seg.features, ViTFeatures) and seg.features.model_name == "vit_base_patch8_224.dino"
    assert seg.features.output == "keys" and seg.features.patch == (8, 8) and seg.features.embed_dim == 768
    grid = seg._feature_grid((480, 854))
    assert grid == (96, 96) and seg.features.input_size((480, 854), grid) == (768, 768)
    fbms = get_method("globalopt").config(preset_config("paper-globalopt", "fbms59").method_params)
    assert (fbms.optimisation.lam, fbms.optimisation.warp_weight) == (0.1, 0.01)
