"""Binarisation and refinement: thresholds from the data, edges that follow the image."""
import numpy as np
import pytest
import torch

from vosbatch.metrics import boundary_f, jaccard
from vosbatch.postprocess.binarize import binarize, centre_at_cut, kmeans_threshold
from vosbatch.postprocess.refine import smoother_refine
from support.synthetic import make_video


def test_kmeans_threshold_separates_two_levels_and_falls_back_to_half():
    rng = np.random.default_rng(0)
    soft = np.concatenate([rng.normal(0.2, 0.03, 5000), rng.normal(0.7, 0.03, 2000)]).clip(0, 1)
    assert 0.4 < kmeans_threshold(soft) < 0.5
    assert kmeans_threshold(np.full(1000, 0.3) + rng.normal(0, 0.01, 1000)) == 0.5


def _sklearn_kmeans_threshold(soft, samples=200_000, seed=0, min_gap=0.2):
    """The threshold as scikit-learn's K-means (Lloyd's iterations, 3 k-means++ starts) finds it."""
    from sklearn.cluster import KMeans

    flat = soft.reshape(-1)
    if flat.size > samples:
        flat = flat[np.random.default_rng(seed).choice(flat.size, samples, replace=False)]
    lo, hi = sorted(KMeans(n_clusters=2, n_init=3, random_state=seed).fit(flat[:, None].astype(np.float64)).cluster_centers_[:, 0])
    return 0.5 * (lo + hi) if hi - lo >= min_gap else 0.5


def test_the_exact_two_means_is_the_best_split_and_agrees_with_lloyds_iterations():
    """The sort-and-scan K-means (K=2) of 1-D values gives the split of least within-cluster squares (checked
    against every split of a small sample), and the cut of scikit-learn's K-means on soft masks of a real
    method's kind (two noisy levels, a ramp, subsampled videos) to within Lloyd's convergence tolerance."""
    from vosbatch.postprocess.binarize import two_means_1d

    rng = np.random.default_rng(3)
    x = np.sort(rng.beta(0.5, 0.8, 300))
    sse = [((x[:k] - x[:k].mean()) ** 2).sum() + ((x[k:] - x[k:].mean()) ** 2).sum() for k in range(1, len(x))]
    k = int(np.argmin(sse)) + 1
    lo, hi = two_means_1d(torch.from_numpy(rng.permutation(x)))
    assert lo == pytest.approx(x[:k].mean(), abs=1e-12) and hi == pytest.approx(x[k:].mean(), abs=1e-12)
    vid = make_video(frames=6, size=(96, 128), seed=2)
    cases = [np.where(vid.masks, 0.8, 0.1) + 0.1 * rng.standard_normal(vid.masks.shape),
             rng.beta(0.3, 0.9, (30, 120, 160)),  # 576,000 values: the 200,000 samples are drawn
             np.linspace(0, 1, 50_000) ** 3]
    def within_squares(values, cut):
        lo, hi = values[values <= cut], values[values > cut]
        return ((lo - lo.mean()) ** 2).sum() + ((hi - hi.mean()) ** 2).sum()

    for soft in cases:
        soft = np.clip(soft, 0, 1).astype(np.float32)
        ours, lloyd = kmeans_threshold(soft), _sklearn_kmeans_threshold(soft)
        assert ours == pytest.approx(lloyd, abs=2e-3)
        values = soft.reshape(-1).astype(np.float64)
        assert within_squares(values, ours) <= within_squares(values, lloyd) * (1 + 1e-9)
        assert kmeans_threshold(torch.from_numpy(soft)) == kmeans_threshold(soft)


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
    from vosbatch.postprocess.colour_model import colour_bins, colour_model_refine

    vid = make_video(frames=4, size=(80, 100), obj_size=(20, 26), bg_velocity=(0.0, 0.0), seed=5)
    soft = np.where(vid.masks, 0.9, 0.1).astype(np.float32)
    soft[:, :, :40] = np.where(vid.masks[:, :, :40], 0.4, 0.1)  # the object's left part barely moved
    plain = np.mean([jaccard(s > 0.5, g) for s, g in zip(soft, vid.masks)])
    bins = colour_bins(vid.frames)
    refined = colour_model_refine(bins, torch.from_numpy(soft)).numpy()
    better = np.mean([jaccard(s > 0.5, g) for s, g in zip(refined, vid.masks)])
    assert better > plain + 0.05, (plain, better)
    assert refined.shape == soft.shape and refined.dtype == np.float32
    assert np.array_equal(colour_model_refine(bins, torch.from_numpy(soft), weight=0.0).numpy(), soft)


def _numpy_colour_model(frames, soft, weight=2.0, rounds=2, bins=16, confident=0.25):
    """The colour model in numpy, as vosbatch computed it before it moved to torch: the reference."""
    import cv2

    def logit(p):
        p = np.clip(p, 1e-4, 1 - 1e-4)
        return np.log(p / (1 - p))

    lab = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB) for f in frames]).astype(np.int32) * bins >> 8
    idx = (lab[..., 0] * bins + lab[..., 1]) * bins + lab[..., 2]
    current = soft
    for _ in range(rounds):
        fg = np.bincount(idx[current > 1 - confident], minlength=bins**3) + 1.0
        bg = np.bincount(idx[current < confident], minlength=bins**3) + 1.0
        fg, bg = fg / fg.sum(), bg / bg.sum()
        post = (fg / (fg + bg))[idx].astype(np.float32)
        current = 1.0 / (1.0 + np.exp(-(logit(soft) + weight * logit(post))))
    return current.astype(np.float32)


def test_the_colour_model_in_torch_equals_the_numpy_reference():
    from vosbatch.postprocess.colour_model import colour_bins, colour_model_refine

    vid = make_video(frames=5, size=(72, 96), seed=8)
    rng = np.random.default_rng(8)
    soft = np.clip(np.where(vid.masks, 0.7, 0.2) + 0.2 * rng.standard_normal(vid.masks.shape), 0, 1).astype(np.float32)
    ours = colour_model_refine(colour_bins(vid.frames, device=torch.device("cpu")), torch.from_numpy(soft)).numpy()
    np.testing.assert_allclose(ours, _numpy_colour_model(vid.frames, soft), rtol=0, atol=2e-6)


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
