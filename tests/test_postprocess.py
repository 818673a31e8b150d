"""Binarisation and refinement: thresholds from the data, edges that follow the image."""
import numpy as np

from vosbatch.metrics import boundary_f, jaccard
from vosbatch.postprocess.binarize import binarize, kmeans_threshold
from vosbatch.postprocess.refine import guided_refine
from vosbatch.testing.synthetic import make_video


def test_kmeans_threshold_separates_two_levels_and_falls_back_to_half():
    rng = np.random.default_rng(0)
    soft = np.concatenate([rng.normal(0.2, 0.03, 5000), rng.normal(0.7, 0.03, 2000)]).clip(0, 1)
    assert 0.4 < kmeans_threshold(soft) < 0.5
    assert kmeans_threshold(np.full(1000, 0.3) + rng.normal(0, 0.01, 1000)) == 0.5


def test_guided_refinement_snaps_blurry_masks_to_image_edges():
    vid = make_video(frames=3, size=(120, 160), obj_size=(30, 40), bg_velocity=(0.0, 0.0), seed=4)
    coarse = vid.masks[:, ::8, ::8].astype(np.float32)  # a blocky 8-px-grid mask
    plain = binarize(coarse, 120, 160)
    refined = binarize(coarse, 120, 160, guide=vid.frames)
    f_plain = np.mean([boundary_f(m, g) for m, g in zip(plain, vid.masks)])
    f_refined = np.mean([boundary_f(m, g) for m, g in zip(refined, vid.masks)])
    assert f_refined > f_plain + 0.05, (f_plain, f_refined)
    assert np.mean([jaccard(m, g) for m, g in zip(refined, vid.masks)]) > 0.8
    out = guided_refine(vid.frames, coarse.repeat(8, 1).repeat(8, 2))
    assert out.shape == (3, 120, 160) and out.min() >= 0 and out.max() <= 1


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
