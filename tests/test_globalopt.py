"""Eq. (1): correct gradients, and the optimisation repairs a corrupted initialisation."""
import numpy as np
import pytest
import torch

from vosbatch.flow import create_flow
from vosbatch.flow.base import BidirectionalFlow
from vosbatch.features import create_features
from vosbatch.methods import get_method
from vosbatch.methods.base import MethodInput
from vosbatch.flow.reliability import photometric_reliability
from vosbatch.methods.globalopt import feature_grid
from vosbatch.methods.globalopt.method import eq1_loss, initial_masks, optimise
from vosbatch.ops.warp import backward_warp
from vosbatch.metrics import jaccard
from vosbatch.postprocess.binarize import binarize
from support.synthetic import make_video


@pytest.mark.parametrize("warp_weight", [1.0, 0.01])
def test_eq1_gradients_match_finite_differences(warp_weight):
    """Eq. (1) with the warp terms at full weight and at the authors' 0.01."""
    torch.manual_seed(int(warp_weight * 100))
    t, h, w = 4, 5, 6
    z = torch.randn(t, 1, h, w, dtype=torch.float64, requires_grad=True)
    init = torch.rand(t, 1, h, w, dtype=torch.float64)
    ff = torch.randn(t - 1, h, w, 2, dtype=torch.float64) * 0.7
    fb = torch.randn(t - 1, h, w, 2, dtype=torch.float64) * 0.7
    wf = torch.rand(t - 1, 1, h, w, dtype=torch.float64)
    wb = torch.rand(t - 1, 1, h, w, dtype=torch.float64)
    loss = lambda x: eq1_loss(x, init, ff, fb, wf, wb, lam=2.0, warp_weight=warp_weight)  # noqa: E731
    assert torch.autograd.gradcheck(loss, (z,), eps=1e-6, atol=1e-5)


def test_warp_weight_scales_only_the_pair_terms():
    torch.manual_seed(0)
    t, h, w = 3, 4, 5
    z, init = torch.randn(t, 1, h, w, dtype=torch.float64), torch.rand(t, 1, h, w, dtype=torch.float64)
    ff, fb = (torch.randn(t - 1, h, w, 2, dtype=torch.float64) for _ in range(2))
    ones = torch.ones(t - 1, 1, h, w, dtype=torch.float64)
    unary = eq1_loss(z, init, ff, fb, ones, ones, lam=1.0, warp_weight=0.0)
    full = eq1_loss(z, init, ff, fb, ones, ones, lam=1.0, warp_weight=1.0)
    assert torch.isclose(eq1_loss(z, init, ff, fb, ones, ones, lam=1.0, warp_weight=0.01), unary + 0.01 * (full - unary))


def test_eq1_is_minimal_for_consistent_masks():
    # With exact flow, GT masks make the warp terms small; a mask that contradicts its neighbours costs more.
    vid = make_video(frames=4, size=(32, 40), obj_size=(8, 10), obj_velocity=(2.0, 0.0), bg_velocity=(0.0, 0.0))
    gt = torch.from_numpy(vid.masks.astype(np.float64))[:, None].clamp(0.02, 0.98)
    z_gt = torch.logit(gt)
    ff, fb = torch.from_numpy(vid.forward).double(), torch.from_numpy(vid.backward).double()
    ones = torch.ones(3, 1, 32, 40, dtype=torch.float64)
    bad = z_gt.clone()
    bad[2] = -bad[2]  # frame 2 inverted
    lo = eq1_loss(z_gt, gt, ff, fb, ones, ones, lam=0.0)
    hi = eq1_loss(bad, gt, ff, fb, ones, ones, lam=0.0)
    assert hi > 1.5 * lo


def _occlusion_free_weights(vid):
    """1 where following the true flow lands on the same label: what flow-reliability masking keeps."""

    m = torch.from_numpy(vid.masks.astype(np.float64))[:, None]
    on_next, _ = backward_warp(m[:-1], torch.from_numpy(vid.backward).double(), mode="nearest")
    on_prev, _ = backward_warp(m[1:], torch.from_numpy(vid.forward).double(), mode="nearest")
    w_next = (on_next == m[1:]).double()[:, 0].numpy()  # term on frame p+1 (flow p+1 -> p)
    w_prev = (on_prev == m[:-1]).double()[:, 0].numpy()  # term on frame p (flow p -> p+1)
    return w_next, w_prev


def test_optimisation_repairs_corrupted_initialisation():
    vid = make_video(frames=8, size=(48, 64), obj_size=(12, 16), obj_velocity=(2.0, 1.0), bg_velocity=(-1.0, 0.0), seed=3)
    rng = np.random.default_rng(0)
    init = np.where(vid.masks, 0.85, 0.15).astype(np.float32)
    init[3] = 0.5 + 0.05 * rng.standard_normal(init[3].shape).astype(np.float32)  # one frame carries no information
    init[5] = 1.0 - init[5]  # one frame is inverted
    flips = rng.random(init.shape) < 0.15  # salt-and-pepper everywhere
    init[flips] = 1.0 - init[flips]
    init = np.clip(init, 0.02, 0.98)
    w_next, w_prev = _occlusion_free_weights(vid)

    def mean_iou(s):
        return np.mean([jaccard(m > 0.5, g) for m, g in zip(s, vid.masks)])

    soft, info = optimise(init, vid.forward, vid.backward, w_next, w_prev, lam=1.0, max_iter=200)
    assert info["loss_end"] < info["loss_start"]
    before, after = mean_iou(init), mean_iou(soft)
    assert after > before + 0.15, (before, after)
    assert jaccard(soft[3] > 0.5, vid.masks[3]) > 0.6  # the uninformative frame is filled in from its neighbours
    assert jaccard(soft[5] > 0.5, vid.masks[5]) > 0.5  # the inverted frame is outvoted
    # the same optimisation with the flow directions swapped (a classic warping bug) does clearly worse
    wrong, _ = optimise(init, vid.backward, vid.forward, w_prev, w_next, lam=1.0, max_iter=200)
    assert mean_iou(wrong) < after - 0.05


def test_globalopt_end_to_end_on_synthetic_video_with_estimated_flow():
    vid = make_video(frames=10, size=(96, 128), obj_size=(22, 30), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=1)
    flow = create_flow("dis")(vid.frames)
    method = get_method("globalopt")
    cfg = method.config({"spectral.grid_stride": 4, "optimisation.stride": 2})
    feats = create_features("colour")(vid.frames, feature_grid(vid.frames.shape[1:3], cfg))
    out = method.run(MethodInput(vid.frames, flow, feats), cfg)
    masks = binarize(out.soft, 96, 128)
    init = binarize(out.stages["init"], 96, 128)
    j = np.mean([jaccard(m, g) for m, g in zip(masks, vid.masks)])
    j_init = np.mean([jaccard(m, g) for m, g in zip(init, vid.masks)])
    assert j > 0.75, (j_init, j)
    assert j >= j_init - 0.02


def test_large_object_is_still_found():
    # The object covers more than half of the frame: "the smaller side" would pick the background.
    vid = make_video(frames=8, size=(80, 96), obj_size=(34, 40), obj_velocity=(2.0, 0.0), bg_velocity=(0.0, 0.0),
                     start=(40, 44), seed=2)
    assert vid.masks.mean() > 0.5
    flow = BidirectionalFlow(vid.forward, vid.backward)
    method = get_method("globalopt")
    cfg = method.config({"spectral.grid_stride": 4, "optimisation": {"stride": 4, "enabled": False}})
    feats = create_features("colour")(vid.frames, feature_grid(vid.frames.shape[1:3], cfg))
    out = method.run(MethodInput(vid.frames, flow, feats), cfg)
    masks = binarize(out.soft, 80, 96)
    assert np.mean([jaccard(m, g) for m, g in zip(masks[1:-1], vid.masks[1:-1])]) > 0.7


def test_coarse_to_fine_starts_from_the_spectral_grid_solution():
    """The authors' schedule: Eq. 1 on the spectral grid, then at the working resolution from its solution."""
    vid = make_video(frames=8, size=(64, 80), obj_size=(16, 20), obj_velocity=(2.0, 1.0), bg_velocity=(-1.0, 0.5), seed=4)
    flow = BidirectionalFlow(vid.forward, vid.backward)
    method = get_method("globalopt")
    cfg = method.config({"spectral.grid_size": [16, 20], "optimisation": {"stride": 1, "coarse_to_fine": True,
                                                                          "warp_weight": 0.01}})
    assert feature_grid((64, 80), cfg) == (16, 20)
    feats = create_features("colour")(vid.frames, (16, 20))
    out = method.run(MethodInput(vid.frames, flow, feats), cfg)
    assert out.soft.shape == (8, 64, 80)
    assert np.mean([jaccard(m > 0.5, g) for m, g in zip(out.soft, vid.masks)]) > 0.7


def test_photometric_warp_weights_stop_wrong_flow_dragging_the_masks():
    # the object's flow is wrong (9 px down) on most pairs: the affinity still sees it as moving, but
    # warps along it drag the masks off the object unless badly matching vectors are left out of Eq. (1)
    vid = make_video(frames=10, size=(64, 96), obj_size=(14, 20), obj_velocity=(2.0, 1.0), bg_velocity=(-1.0, 0.0), seed=5)
    fwd, bwd = vid.forward.copy(), vid.backward.copy()
    for k in range(1, 8):
        fwd[k][vid.masks[k]] = (0.0, 9.0)
        bwd[k][vid.masks[k + 1]] = (0.0, -9.0)
    flow = BidirectionalFlow(fwd, bwd)
    cfg = get_method("globalopt").config({"spectral.grid_stride": 4})
    feats = create_features("colour")(vid.frames, feature_grid(vid.frames.shape[1:3], cfg))
    init, _, _ = initial_masks(MethodInput(vid.frames, flow, feats), cfg)
    init = torch.nn.functional.interpolate(torch.from_numpy(init)[:, None], size=(64, 96), mode="bilinear")[:, 0].numpy()
    rel = photometric_reliability(vid.frames, flow)
    scores = {}
    for name, (rel_next, rel_prev) in {"all": (None, None), "photometric": (rel.backward, rel.forward)}.items():
        soft, _ = optimise(init, fwd, bwd, rel_next, rel_prev, lam=1.0)
        masks = binarize(soft, 64, 96)
        scores[name] = np.mean([jaccard(m, g) for m, g in zip(masks, vid.masks)])
    assert scores["photometric"] > scores["all"] + 0.15, scores
