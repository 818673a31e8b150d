"""The predictor end to end, in-process: every flow backend and reliability mode finds the object."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from vosbatch.config import RunConfig
from vosbatch.metrics import jaccard
from vosbatch.pipeline import VideoSegmenter, binarize_as_configured
from vosbatch.testing.synthetic import make_video

RAFT_SMALL = Path(__file__).resolve().parents[2] / "shared/models/raft-small.pth"


def _j(result, vid):
    return np.mean([jaccard(m, g) for m, g in zip(result.masks, vid.masks)])


@pytest.mark.parametrize("reliability", ["none", "photometric", "photometric+fb"])
def test_dis_pipeline_with_each_reliability_mode(reliability):
    vid = make_video(frames=8, size=(96, 128), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=1)
    cfg = RunConfig(flow="dis", flow_reliability=reliability, method_params={"grid_stride": 4, "opt_stride": 2})
    res = VideoSegmenter(cfg).segment(vid.frames)
    assert res.masks.shape == vid.masks.shape
    assert _j(res, vid) > 0.7, reliability
    assert {"flow", "init", "optimise", "binarize"} <= set(res.seconds)
    if reliability != "none":
        assert "flow_reliability" in res.seconds


@pytest.mark.skipif(not RAFT_SMALL.is_file(), reason=f"official RAFT-small checkpoint not at {RAFT_SMALL}")
def test_raft_small_pipeline(tmp_path):
    vid = make_video(frames=6, size=(96, 128), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=2)
    cfg = RunConfig(flow="raft-small", flow_weights=str(RAFT_SMALL), flow_iters=6,
                    method_params={"grid_stride": 4, "opt_stride": 2})
    seg = VideoSegmenter(cfg, flow_cache=str(tmp_path / "cache"))
    first = seg.segment(vid.frames)
    assert _j(first, vid) > 0.7
    assert len(list((tmp_path / "cache").iterdir())) == 1  # flows cached once per sequence
    again = seg.segment(vid.frames)
    assert np.array_equal(first.masks, again.masks)  # a cache hit gives the same result


def test_method_output_is_what_segment_binarises():
    """The ablation binarises ``method_output`` itself; it must be the soft masks ``segment`` returns."""
    vid = make_video(frames=6, size=(64, 96), obj_velocity=(3.0, 1.0), seed=2)
    seg = VideoSegmenter(RunConfig(flow="dis", method_params={"grid_stride": 4, "opt_stride": 2}))
    out, seconds = seg.method_output(vid.frames)
    res = seg.segment(vid.frames)
    np.testing.assert_array_equal(out.soft, res.soft)
    np.testing.assert_array_equal(seg.binarize(vid.frames, out.soft), res.masks)
    assert {"flow", "features", "init", "optimise"} <= set(seconds) and "binarize" not in seconds


def test_stage_refine_binarises_the_stages_only():
    """``stage_refine`` sets how the intermediate stages are scored (a cheaper benchmark); the output's masks
    are binarised with ``refine`` whatever it is."""
    vid = make_video(frames=6, size=(64, 96), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=2)
    cfg = RunConfig(flow="dis", refine="fgs", stage_refine="none", method_params={"grid_stride": 4, "opt_stride": 2})
    seg = VideoSegmenter(cfg)
    out, _ = seg.method_output(vid.frames)
    res = seg.segment(vid.frames)
    as_output = VideoSegmenter(dataclasses.replace(cfg, stage_refine=None))
    np.testing.assert_array_equal(res.masks, as_output.binarize(vid.frames, out.soft))
    unrefined = dataclasses.replace(cfg, refine="none")
    init = res.stage_masks["init"]
    np.testing.assert_array_equal(init, binarize_as_configured(unrefined, vid.frames, out.stages["init"]))
    assert not np.array_equal(init, as_output.binarize(vid.frames, out.stages["init"], stage=True))  # the option acts
    assert RunConfig(stage_refine="fgs").digest() != RunConfig().digest()  # resume does not mix two scorings


def test_method_params_parse_json_values_else_strings():
    from vosbatch.config import parse_method_params

    assert parse_method_params(["lam=1", "optimise=false", "split=ncut", "levels=[2, 4]"]) == \
        {"lam": 1, "optimise": False, "split": "ncut", "levels": [2, 4]}
    with pytest.raises(ValueError, match="'lam': expected KEY=VALUE"):
        parse_method_params(["lam"])


def test_appearance_net_in_the_pipeline_and_the_config_hash():
    vid = make_video(frames=8, size=(64, 96), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=1)
    params = {"grid_stride": 4, "opt_stride": 2}
    res = VideoSegmenter(RunConfig(flow="dis", appearance_net=True, method_params=params)).segment(vid.frames, keep_stages=False)
    assert res.masks.shape == vid.masks.shape and _j(res, vid) > 0.7
    plain, with_net = RunConfig(method_params=params), RunConfig(appearance_net=True, method_params=params)
    assert plain.digest() != with_net.digest()
    # runs stored before the option (and flow_height, stage_refine) existed keep their hash (resume skips their finished sequences)
    import hashlib
    import json

    legacy = RunConfig(flow_height=0, method_params=params)
    old = {k: v for k, v in legacy.to_dict().items() if k not in ("appearance_net", "flow_height", "stage_refine")}
    assert legacy.digest() == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert RunConfig.from_stored(old) == legacy and RunConfig.from_stored(old).digest() != plain.digest()


def test_method_digest_keys_the_soft_masks_not_their_binarisation():
    """The ablation caches soft masks under ``method_digest``: every field that changes the method's output
    changes it, post-processing fields do not, and caches made before a field existed keep their key."""
    import hashlib
    import json

    base = RunConfig(method="ike", method_params={"cycles": 1})
    changes_output = [dict(flow="raft-small"), dict(flow_height=0), dict(flow_reliability="photometric"), dict(seed=1),
                      dict(refine_from="runs/other"), dict(method_params={"cycles": 2}), dict(work_height=120)]
    digests = {dataclasses.replace(base, **c).method_digest() for c in changes_output}
    assert len(digests) == len(changes_output) and base.method_digest() not in digests
    for post in (dict(refine="crf"), dict(appearance_net=True), dict(appearance_weight=0.0), dict(window_frames=50)):
        assert dataclasses.replace(base, **post).method_digest() == base.method_digest()
    # every field is accounted for: one added to RunConfig must change the key unless it only binarises (or places) the output
    binarisation_only = {"appearance_weight", "appearance_net", "refine", "stage_refine", "window_frames", "window_overlap",
                         "device"}
    for f in dataclasses.fields(RunConfig):
        value = getattr(base, f.name)
        other = ({"other": 1} if isinstance(value, dict) else not value if isinstance(value, bool)
                 else value + 1 if isinstance(value, (int, float)) else f"{value}-other")
        changed = dataclasses.replace(base, **{f.name: other}).method_digest() != base.method_digest()
        assert changed == (f.name not in binarisation_only), f.name
    # the key caches had before flow_reliability and refine_from joined it
    first = [base.method, base.flow, None, base.flow_iters, base.features, None, base.work_height, base.method_params, 0, 480]
    assert base.method_digest() == hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()[:12]


def test_flow_computed_at_flow_height_reaches_the_method_on_the_working_grid(tmp_path, monkeypatch):
    """``flow_height``: flow is estimated on larger frames, then resized (vectors rescaled) to the grid
    the method works on; the cache keeps it at the resolution it was computed at."""
    from vosbatch.methods import base

    seen = {}

    def _record(inp, cfg):
        seen["frames"], seen["flow"] = inp.frames.shape, inp.flow
        return base.MethodOutput(np.zeros(inp.frames.shape[:3], np.float32))

    monkeypatch.setitem(base._REGISTRY, "test-record-flow", (_record, dict))  # registered for this test only

    vid = make_video(frames=5, size=(128, 192), obj_size=(30, 40), obj_velocity=(4.0, 2.0), bg_velocity=(-2.0, 1.0), seed=3)
    cache = tmp_path / "cache"
    seg = VideoSegmenter(RunConfig(method="test-record-flow", flow="dis", work_height=64, flow_height=128), flow_cache=str(cache))
    seg.method_output(vid.frames)
    flow = seen["flow"]
    assert seen["frames"] == (5, 64, 96, 3) and flow.forward.shape == (4, 64, 96, 2) == flow.backward.shape
    inside = vid.masks[:-1, ::2, ::2]
    inner = inside & np.roll(inside, 4, 1) & np.roll(inside, -4, 1) & np.roll(inside, 4, 2) & np.roll(inside, -4, 2)
    # the object moves (4, 2) px per frame at full size: (2, 1) on the half-size working grid
    np.testing.assert_allclose(np.median(flow.forward[inner], 0), [2.0, 1.0], atol=0.25)
    np.testing.assert_allclose(np.median(flow.forward[~inside], 0), [-1.0, 0.5], atol=0.25)
    after = vid.masks[1:, ::2, ::2]
    after = after & np.roll(after, 4, 1) & np.roll(after, -4, 1) & np.roll(after, 4, 2) & np.roll(after, -4, 2)
    np.testing.assert_allclose(np.median(flow.backward[after], 0), [-2.0, -1.0], atol=0.25)
    assert [("128x192" in p.name) for p in cache.iterdir()] == [True]
    assert RunConfig(flow_height=0).digest() != RunConfig().digest() == RunConfig(flow_height=480).digest()
