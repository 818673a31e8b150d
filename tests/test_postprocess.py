"""Binarisation and refinement: thresholds from the data, edges that follow the image."""
import numpy as np
import pytest

from vosbatch.metrics import boundary_f, jaccard
from vosbatch.postprocess.binarize import binarize, centre_at_cut, kmeans_threshold
from vosbatch.postprocess.refine import guided_refine, smoother_refine
from vosbatch.testing.synthetic import make_video


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


@pytest.mark.parametrize("refine", ["fgs", "guided"])
def test_edge_aware_refinement_snaps_blurry_masks_to_image_edges(refine):
    vid = make_video(frames=3, size=(120, 160), obj_size=(30, 40), bg_velocity=(0.0, 0.0), seed=4)
    coarse = vid.masks[:, ::8, ::8].astype(np.float32)  # a blocky 8-px-grid mask
    plain = binarize(coarse, 120, 160)
    refined = binarize(coarse, 120, 160, guide=vid.frames, refine=refine)
    f_plain = np.mean([boundary_f(m, g) for m, g in zip(plain, vid.masks)])
    f_refined = np.mean([boundary_f(m, g) for m, g in zip(refined, vid.masks)])
    assert f_refined > f_plain + 0.05, (f_plain, f_refined)
    assert np.mean([jaccard(m, g) for m, g in zip(refined, vid.masks)]) > 0.8
    out = {"fgs": smoother_refine, "guided": guided_refine}[refine](vid.frames, coarse.repeat(8, 1).repeat(8, 2))
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
    from vosbatch.postprocess.appearance import colour_model_refine

    vid = make_video(frames=4, size=(80, 100), obj_size=(20, 26), bg_velocity=(0.0, 0.0), seed=5)
    soft = np.where(vid.masks, 0.9, 0.1).astype(np.float32)
    soft[:, :, :40] = np.where(vid.masks[:, :, :40], 0.4, 0.1)  # the object's left part barely moved
    plain = np.mean([jaccard(s > 0.5, g) for s, g in zip(soft, vid.masks)])
    refined = colour_model_refine(vid.frames, soft)
    better = np.mean([jaccard(s > 0.5, g) for s, g in zip(refined, vid.masks)])
    assert better > plain + 0.05, (plain, better)
    assert refined.shape == soft.shape and refined.dtype == np.float32
    assert np.array_equal(colour_model_refine(vid.frames, soft, weight=0.0), soft)


def _object_lost_in_some_frames(seed=3):
    """Soft masks on a half-size grid: right in most frames, the object missing in two (it stopped
    moving: motion saw nothing there)."""
    import torch
    import torch.nn.functional as F

    vid = make_video(frames=12, size=(64, 80), obj_size=(14, 18), obj_velocity=(2.0, 1.0), bg_velocity=(-1.0, 0.5), seed=seed)
    masks = torch.from_numpy(vid.masks.astype(np.float32))[:, None]
    soft = F.adaptive_avg_pool2d(masks, (32, 40))[:, 0].numpy() * 0.8 + 0.1
    lost = [3, 8]
    soft[lost] = 0.1
    return vid, soft, lost


def test_appearance_net_finds_the_object_where_the_soft_masks_lost_it():
    from vosbatch.postprocess.appearance import AppearanceNetConfig, appearance_net

    vid, soft, lost = _object_lost_in_some_frames()
    cfg = AppearanceNetConfig(steps=150)
    pred = appearance_net(vid.frames, soft, cfg, seed=0)
    assert pred.shape == (12, 64, 80) and pred.dtype == np.float32  # twice the soft masks' grid
    j = [jaccard(p > 0.5, g) for p, g in zip(pred, vid.masks)]
    assert np.mean([j[i] for i in lost]) > 0.6, j  # learnt from the other frames what the object looks like
    assert np.mean([v for i, v in enumerate(j) if i not in lost]) > 0.8, j  # and kept it where the masks were right
    np.testing.assert_array_equal(pred, appearance_net(vid.frames, soft, cfg, seed=0))  # seeded


def test_binarize_with_the_appearance_net_returns_full_size_masks_that_recover_the_object():
    from vosbatch.postprocess.appearance import AppearanceNetConfig

    vid, soft, lost = _object_lost_in_some_frames()
    plain = binarize(soft, 64, 80, guide=vid.frames, colour_weight=0.0, refine="none")
    with_net = binarize(soft, 64, 80, guide=vid.frames, colour_weight=0.0, refine="none", net=AppearanceNetConfig(steps=150))
    assert with_net.shape == vid.masks.shape and with_net.dtype == bool
    j = lambda m: np.mean([jaccard(m[i], vid.masks[i]) for i in lost])  # noqa: E731
    assert j(plain) < 0.1 < 0.6 < j(with_net), (j(plain), j(with_net))


@pytest.mark.parametrize("refine", [smoother_refine, guided_refine])
def test_refinement_without_ximgproc_keeps_the_masks_and_says_so_once(refine, monkeypatch, caplog):
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
            first, second = refine(frames, soft), refine(frames, soft)
        assert np.array_equal(first, soft) and np.array_equal(second, soft)
        warnings = [r for r in caplog.records if "ximgproc" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
    finally:
        refine_module._has_ximgproc.cache_clear()
