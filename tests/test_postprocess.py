"""Binarisation and refinement: thresholds from the data, edges that follow the image."""
import numpy as np
import pytest

from vosbatch.metrics import boundary_f, jaccard
from vosbatch.postprocess.binarize import binarize, centre_at_cut, kmeans_threshold
from vosbatch.postprocess.refine import smoother_refine
from support.synthetic import make_video


def test_kmeans_threshold_separates_two_levels_and_falls_back_to_half():
    rng = np.random.default_rng(0)
    soft = np.concatenate([rng.normal(0.2, 0.03, 5000), rng.normal(0.7, 0.03, 2000)]).clip(0, 1)
    assert 0.4 < kmeans_threshold(soft) < 0.5
    assert kmeans_threshold(np.full(1000, 0.3) + rng.normal(0, 0.01, 1000)) == 0.5


def test_centre_at_cut_puts_the_videos_cut_at_half_and_its_levels_on_the_confident_sides():
    """A scaled score (background ~0.03, object ~0.4: an eigenvector, not a probability) becomes a
    probability whose 0.5 is the video's K-means cut; sharpened, both levels read as confident for
    the colour model (< 0.25, > 0.75), which an object at 0.4 is not."""
    rng = np.random.default_rng(1)
    score = np.concatenate([rng.normal(0.03, 0.01, 8000), rng.normal(0.4, 0.05, 2000), [0.0, 1.0]]).clip(0, 1)
    cut = kmeans_threshold(score)
    for sharpness in (1.0, 3.0):
        prob = centre_at_cut(score, sharpness)
        assert prob.dtype == np.float32 and prob.shape == score.shape
        assert np.array_equal(prob > 0.5, score > cut)  # same decisions, monotone
        assert prob[-2] < 1e-4 and prob[-1] > 1 - 1e-4  # certain stays certain
    sharp, plain = centre_at_cut(score, 3.0), centre_at_cut(score, 1.0)
    assert np.median(sharp[:8000]) < 0.25 and np.median(sharp[8000:10000]) > 0.75
    assert 0.25 < np.median(plain[8000:10000]) < 0.75


@pytest.mark.parametrize("refine", ["fgs", "crf"])
def test_edge_aware_refinement_snaps_blurry_masks_to_image_edges(refine):
    vid = make_video(frames=3, size=(120, 160), obj_size=(30, 40), bg_velocity=(0.0, 0.0), seed=4)
    coarse = vid.masks[:, ::8, ::8].astype(np.float32)  # a blocky 8-px-grid mask
    plain = binarize(coarse, 120, 160)
    refined = binarize(coarse, 120, 160, guide=vid.frames, refine=refine)
    f_plain = np.mean([boundary_f(m, g) for m, g in zip(plain, vid.masks)])
    f_refined = np.mean([boundary_f(m, g) for m, g in zip(refined, vid.masks)])
    assert f_refined > f_plain + 0.05, (f_plain, f_refined)
    assert np.mean([jaccard(m, g) for m, g in zip(refined, vid.masks)]) > 0.8
    out = smoother_refine(vid.frames, coarse.repeat(8, 1).repeat(8, 2))
    assert out.shape == (3, 120, 160) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


def test_smoother_moves_a_misplaced_mask_edge_onto_the_object_outline():
    # a uniformly coloured object on a different background; the soft mask is a blurred copy shifted
    # by 4 px (it spills over one side and falls short of the other): the smoother pulls both edges
    # onto the colour edge, at full and at half size (its λ follows the frame's diagonal)
    import cv2

    frames = np.full((1, 120, 160, 3), (60, 120, 60), np.uint8)
    frames[0, 30:90, 40:120] = (200, 80, 80)
    truth = np.zeros((120, 160), bool)
    truth[30:90, 40:120] = True
    shifted = np.roll(truth, (4, 4), axis=(0, 1)).astype(np.float32)
    soft = cv2.GaussianBlur(shifted, (0, 0), 3)[None] * 0.8 + 0.1
    for step in (1, 2):
        f, s, t = frames[:, ::step, ::step].copy(), soft[:, ::step, ::step].copy(), truth[::step, ::step]
        out = smoother_refine(f, s)[0]
        before, after = jaccard(s[0] > 0.5, t), jaccard(out > 0.5, t)
        assert after > 0.97 and after > before + 0.05, (step, before, after)


def test_colour_model_recovers_object_parts_that_motion_missed():
    from vosbatch.postprocess.colour_model import colour_model_refine

    vid = make_video(frames=4, size=(80, 100), obj_size=(20, 26), bg_velocity=(0.0, 0.0), seed=5)
    soft = np.where(vid.masks, 0.9, 0.1).astype(np.float32)
    soft[:, :, :40] = np.where(vid.masks[:, :, :40], 0.4, 0.1)  # the object's left part barely moved
    plain = np.mean([jaccard(s > 0.5, g) for s, g in zip(soft, vid.masks)])
    refined = colour_model_refine(vid.frames, soft)
    better = np.mean([jaccard(s > 0.5, g) for s, g in zip(refined, vid.masks)])
    assert better > plain + 0.05, (plain, better)
    assert refined.shape == soft.shape and refined.dtype == np.float32
    assert np.array_equal(colour_model_refine(vid.frames, soft, weight=0.0), soft)


def test_refinement_without_ximgproc_keeps_the_masks_and_says_so_once(monkeypatch, caplog):
    # a broken install (opencv-contrib shadowed by plain OpenCV) must not fail the batch, nor pass silently
    import logging

    import cv2
    from vosbatch.postprocess import refine as refine_module

    monkeypatch.delattr(cv2, "ximgproc", raising=False)
    refine_module._has_ximgproc.cache_clear()
    try:
        frames = np.zeros((2, 16, 16, 3), np.uint8)
        soft = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
        with caplog.at_level(logging.WARNING, logger=refine_module.__name__):
            first, second = smoother_refine(frames, soft), smoother_refine(frames, soft)
        assert np.array_equal(first, soft) and np.array_equal(second, soft)
        warnings = [r for r in caplog.records if "ximgproc" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
    finally:
        refine_module._has_ximgproc.cache_clear()
