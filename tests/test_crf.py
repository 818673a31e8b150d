"""Dense CRF refinement (the default): blurry masks snap to colour edges; a clear error without pydensecrf2."""
import os
import sys

import numpy as np
import pytest

from vosbatch.metrics import boundary_f, jaccard
from vosbatch.postprocess import crf as crf_module
from vosbatch.postprocess.binarize import binarize
from vosbatch.postprocess.crf import CRFUnavailable, crf_params, crf_refine
from support.cli import cli_env, run_cli
from support.synthetic import make_video



def _blurred_disc_scene(seed=0):
    """A red disc on a noisy green background and a blurred, shifted soft mask of it."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = 120, 160
    ys, xs = np.mgrid[0:h, 0:w]
    truth = (ys - 60) ** 2 + (xs - 75) ** 2 <= 32**2
    img = np.where(truth[..., None], [200, 40, 40], [40, 160, 60]).astype(np.float32)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(truth, 4, axis=1).astype(np.float32)  # a coarse mask a few pixels off
    soft = np.clip(cv2.GaussianBlur(shifted, (0, 0), 6) * 0.8 + 0.1, 0, 1).astype(np.float32)
    return img[None], soft[None], truth[None]


def test_crf_snaps_a_blurred_mask_to_the_colour_edge():
    img, soft, truth = _blurred_disc_scene()
    before = soft[0] > 0.5
    after = crf_refine(img, soft)[0] > 0.5
    assert jaccard(after, truth[0]) > jaccard(before, truth[0]) + 0.03, (jaccard(before, truth[0]), jaccard(after, truth[0]))
    assert jaccard(after, truth[0]) > 0.93
    assert boundary_f(after, truth[0]) > boundary_f(before, truth[0]) + 0.1
    # the defaults reach less far than DeepLab's (their unary is already edge-snapped by the smoother);
    # DeepLab's wider colour kernel and stronger smoothness pull this 4-px-off blur all the way
    deeplab = crf_refine(img, soft, crf_params(appearance_xy_std=67.0, smoothness_weight=3.0))[0] > 0.5
    assert jaccard(deeplab, truth[0]) > 0.95


def test_crf_keeps_the_unary_where_the_image_has_no_edge():
    # a flat grey image: no colour edge to snap to, so the labelling follows the (confident) unary
    img = np.full((1, 60, 80, 3), 128, np.uint8)
    soft = np.full((1, 60, 80), 0.1, np.float32)
    soft[0, 20:40, 20:50] = 0.9
    out = crf_refine(img, soft)[0] > 0.5
    assert jaccard(out, soft[0] > 0.5) > 0.9


def test_binarize_with_crf_improves_coarse_masks_on_a_video():
    vid = make_video(frames=3, size=(120, 160), obj_size=(30, 40), bg_velocity=(0.0, 0.0), seed=4)
    coarse = vid.masks[:, ::8, ::8].astype(np.float32)  # a blocky 8-px-grid mask
    plain = binarize(coarse, 120, 160, guide=vid.frames, refine="none")
    refined = binarize(coarse, 120, 160, guide=vid.frames, refine="crf")
    assert refined.shape == (3, 120, 160) and refined.dtype == bool
    f_plain = np.mean([boundary_f(m, g) for m, g in zip(plain, vid.masks)])
    f_crf = np.mean([boundary_f(m, g) for m, g in zip(refined, vid.masks)])
    j_plain = np.mean([jaccard(m, g) for m, g in zip(plain, vid.masks)])
    j_crf = np.mean([jaccard(m, g) for m, g in zip(refined, vid.masks)])
    assert f_crf > f_plain + 0.05 and j_crf >= j_plain, (f_plain, f_crf, j_plain, j_crf)


def test_crf_without_the_extra_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert not crf_module.crf_available()
    img, soft, _ = _blurred_disc_scene()
    with pytest.raises(CRFUnavailable, match=r"pip install pydensecrf2.*--refine fgs"):
        crf_refine(img, soft)
    with pytest.raises(CRFUnavailable):
        binarize(soft, 120, 160, guide=img, refine="crf")
    # the CRF-free smoother, which the message offers, needs no pydensecrf
    assert binarize(soft, 120, 160, guide=img, refine="fgs").shape == (1, 120, 160)


def test_crf_parameters_reach_the_inference():
    # without pairwise kernels the CRF has nothing to add: its marginals are the unary's probabilities,
    # so the blurred mask stays shifted instead of snapping to the disc
    img, soft, truth = _blurred_disc_scene()
    plain = crf_refine(img, soft, crf_params(appearance_weight=0.0, smoothness_weight=0.0, max_height=None))
    np.testing.assert_allclose(plain, soft, atol=1e-3)
    assert jaccard(crf_refine(img, soft)[0] > 0.5, truth[0]) > jaccard(plain[0] > 0.5, truth[0]) + 0.03


def test_unknown_crf_parameter_names_the_known_ones():
    assert crf_params(iterations=3).iterations == 3
    with pytest.raises(ValueError, match="appearance_xy_sd.*known: .*appearance_xy_std"):
        crf_params(appearance_xy_sd=40)


def test_unknown_refinement_is_rejected():
    with pytest.raises(ValueError, match="unknown refinement"):
        binarize(np.zeros((1, 4, 4), np.float32), 8, 8, refine="bilateral")


def test_segmenter_with_refine_crf_segments_a_video():
    from vosbatch.config import RunConfig
    from vosbatch.pipeline import VideoSegmenter

    vid = make_video(frames=6, size=(96, 128), obj_size=(22, 30), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=1)
    result = VideoSegmenter(RunConfig(flow="dis", refine="crf", work_height=96)).segment(vid.frames)
    assert result.masks.shape == vid.masks.shape and result.masks.dtype == bool
    assert result.stage_masks["init"].shape == vid.masks.shape
    assert np.mean([jaccard(m, g) for m, g in zip(result.masks, vid.masks)]) > 0.7


@pytest.mark.parametrize("refinements", [(), ("--refine", "fgs", "--stage-refine", "crf")])
def test_submit_without_pydensecrf_stops_before_starting_anything(tmp_path, refinements):
    """The default refinement's missing library is reported once, up front, not as a failure per sequence
    (also when only the stages' scoring asks for the CRF)."""
    shadow = tmp_path / "shadow" / "pydensecrf"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('pydensecrf2 is not installed')\n")
    env = cli_env(PYTHONPATH=os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli("submit", "--data-root", tmp_path / "nowhere", "--output", tmp_path / "runs", *refinements, check=False,
                   env=env)
    assert proc.returncode == 2 and "pip install pydensecrf2" in proc.stderr and "--refine fgs" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()
