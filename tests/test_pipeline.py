"""The predictor end to end, in-process: flow backends find the object; configuration hashing."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from vosbatch.config import RunConfig
from vosbatch.metrics import jaccard
from vosbatch.pipeline import VideoSegmenter, binarize_as_configured
from support.synthetic import make_video

RAFT_SMALL = Path(__file__).resolve().parents[2] / "shared/models/raft-small.pth"


def _j(result, vid):
    return np.mean([jaccard(m, g) for m, g in zip(result.masks, vid.masks)])


SMALL = {"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}}


def test_dis_pipeline_finds_the_object():
    vid = make_video(frames=8, size=(96, 128), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=1)
    res = VideoSegmenter(RunConfig(flow="dis", method_params=SMALL)).segment(vid.frames)
    assert res.masks.shape == vid.masks.shape
    assert _j(res, vid) > 0.7
    assert {"flow", "init", "optimise", "binarize"} <= set(res.seconds)


@pytest.mark.skipif(not RAFT_SMALL.is_file(), reason=f"official RAFT-small checkpoint not at {RAFT_SMALL}")
def test_raft_small_pipeline(tmp_path):
    vid = make_video(frames=6, size=(96, 128), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=2)
    cfg = RunConfig(flow="raft-small", flow_weights=str(RAFT_SMALL), flow_iters=6,
                    method_params={"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}})
    seg = VideoSegmenter(cfg, flow_cache=str(tmp_path / "cache"))
    first = seg.segment(vid.frames)
    assert _j(first, vid) > 0.7
    assert len(list((tmp_path / "cache").iterdir())) == 1  # flows cached once per sequence
    again = seg.segment(vid.frames)
    assert np.array_equal(first.masks, again.masks)  # a cache hit gives the same result


def test_method_output_is_what_segment_binarises():
    """The ablation binarises ``method_output`` itself; it must be the soft masks ``segment`` returns."""
    vid = make_video(frames=6, size=(64, 96), obj_velocity=(3.0, 1.0), seed=2)
    seg = VideoSegmenter(RunConfig(flow="dis", method_params={"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}}))
    out, seconds = seg.method_output(vid.frames)
    res = seg.segment(vid.frames)
    np.testing.assert_array_equal(out.soft, res.soft)
    np.testing.assert_array_equal(seg.binarize(vid.frames, out.soft), res.masks)
    assert {"flow", "features", "init", "optimise"} <= set(seconds) and "binarize" not in seconds


def test_stage_refine_binarises_the_stages_only():
    """``stage_refine`` sets how the intermediate stages are scored (a cheaper benchmark); the output's masks
    are binarised with ``refine`` whatever it is."""
    vid = make_video(frames=6, size=(64, 96), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=2)
    cfg = RunConfig(flow="dis", refine="fgs", stage_refine="none", method_params={"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}})
    seg = VideoSegmenter(cfg)
    out, _ = seg.method_output(vid.frames)
    res = seg.segment(vid.frames)
    as_output = VideoSegmenter(dataclasses.replace(cfg, stage_refine=None))
    np.testing.assert_array_equal(res.masks, as_output.binarize(vid.frames, out.soft))
    unrefined = dataclasses.replace(cfg, refine="none")
    init = res.stage_masks["init"]
    np.testing.assert_array_equal(init, binarize_as_configured(unrefined, vid.frames, out.stages["init"]))
    assert not np.array_equal(init, as_output.binarize(vid.frames, out.stages["init"], stage=True))  # the option acts
    assert RunConfig(stage_refine="crf").digest() != RunConfig().digest()  # resume does not mix two scorings


def test_method_params_parse_json_values_else_strings():
    from vosbatch.config import parse_method_params

    assert parse_method_params(["lam=1", "optimise=false", "split=ncut", "levels=[2, 4]"]) == \
        {"lam": 1, "optimise": False, "split": "ncut", "levels": [2, 4]}
    with pytest.raises(ValueError, match="'lam': expected KEY=VALUE"):
        parse_method_params(["lam"])


def test_the_digest_hashes_the_resolved_method_settings():
    """Runs that compute the same thing share a hash (resume skips their finished sequences): a parameter
    repeating its default, or the preset's name, changes nothing; any real setting does."""
    base = RunConfig(method="ike")
    assert RunConfig(method="ike", method_params={"graph": {"chain_length": 15}}).digest() == base.digest()
    assert RunConfig(method="ike", preset="quality").digest() == base.digest()
    changed = [dict(method_params={"cycles": 2}), dict(flow="dis"), dict(flow_height=0), dict(seed=1), dict(refine="fgs"),
               dict(appearance_weight=0.0), dict(window_frames=50), dict(refine_from="runs/x")]
    digests = {dataclasses.replace(base, **c).digest() for c in changed}
    assert len(digests) == len(changed) and base.digest() not in digests


def test_flow_computed_at_flow_height_reaches_the_method_on_the_working_grid(tmp_path, monkeypatch):
    """``flow_height``: flow is estimated on larger frames, then resized (vectors rescaled) to the grid
    the method works on; the cache keeps it at the resolution it was computed at."""
    from vosbatch.methods import base, registry

    seen = {}

    def _record(inp, cfg):
        seen["frames"], seen["flow"] = inp.frames.shape, inp.flow
        return base.MethodOutput(np.zeros(inp.frames.shape[:3], np.float32))

    @dataclasses.dataclass
    class NoSettings:
        pass

    monkeypatch.setitem(registry.METHODS._items, "test-record-flow", registry.Method(_record, NoSettings))  # this test only

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
