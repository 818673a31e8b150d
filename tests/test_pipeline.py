"""The predictor end to end, in-process: every flow backend and reliability mode finds the object."""
from pathlib import Path

import numpy as np
import pytest

from vosbatch.config import RunConfig
from vosbatch.metrics import jaccard
from vosbatch.pipeline import VideoSegmenter
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
    # runs stored before the option existed keep their hash (resume skips their finished sequences)
    import hashlib
    import json

    old = {k: v for k, v in plain.to_dict().items() if k != "appearance_net"}
    assert plain.digest() == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
