"""Eq. (1): correct gradients, and the optimisation repairs a corrupted initialisation."""
import numpy as np
import torch

from vosbatch.flow import create_flow
from vosbatch.flow.base import BidirectionalFlow
from vosbatch.features import create_features
from vosbatch.methods import MethodInput, get_method
from vosbatch.methods.globalopt import eq1_loss, feature_grid, optimise
from vosbatch.metrics import jaccard
from vosbatch.postprocess.binarize import binarize
from vosbatch.testing.synthetic import make_video


def test_eq1_gradients_match_finite_differences():
    torch.manual_seed(0)
    t, h, w = 3, 5, 6
    z = torch.randn(t, 1, h, w, dtype=torch.float64, requires_grad=True)
    init = torch.rand(t, 1, h, w, dtype=torch.float64)
    ff = torch.randn(t - 1, h, w, 2, dtype=torch.float64) * 0.7
    fb = torch.randn(t - 1, h, w, 2, dtype=torch.float64) * 0.7
    wf = torch.rand(t - 1, 1, h, w, dtype=torch.float64)
    wb = torch.rand(t - 1, 1, h, w, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: eq1_loss(x, init, ff, fb, wf, wb, lam=2.0), (z,), eps=1e-6, atol=1e-5)


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
    from vosbatch.ops.warp import backward_warp

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
    fn, cfg_cls = get_method("globalopt")
    cfg = cfg_cls(grid_stride=4, opt_stride=2)
    feats = create_features("colour")(vid.frames, feature_grid(vid.frames.shape[1:3], cfg))
    out = fn(MethodInput(vid.frames, flow, feats), cfg)
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
    fn, cfg_cls = get_method("globalopt")
    cfg = cfg_cls(grid_stride=4, opt_stride=4, optimise=False)
    feats = create_features("colour")(vid.frames, feature_grid(vid.frames.shape[1:3], cfg))
    out = fn(MethodInput(vid.frames, flow, feats), cfg)
    masks = binarize(out.soft, 80, 96)
    assert np.mean([jaccard(m, g) for m, g in zip(masks[1:-1], vid.masks[1:-1])]) > 0.7
