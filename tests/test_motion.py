"""Camera-motion models: the homography's residual and the distance from the background's two-view geometry."""
from __future__ import annotations

import numpy as np

from vosbatch.flow.base import BidirectionalFlow
from vosbatch.methods import get_method
from vosbatch.methods.base import MethodInput
from vosbatch.ops.motion import background_layers, independent_motion, residual_flow


def _translating_camera(depth: np.ndarray, square=(slice(12, 22), slice(30, 40)), object_motion=(0.0, 3.0)):
    """One flow field (1,H,W,2): a camera translating sideways over a static scene of the given depth (the
    flow of a static point is inversely proportional to its depth: parallax), and a square moving on its own."""
    flow = np.zeros((1,) + depth.shape + (2,), np.float32)
    flow[0, ..., 0] = 30.0 / depth
    flow[0][square] = object_motion
    return flow


def test_epipolar_distance_removes_parallax_that_the_homography_leaves():
    h, w = 60, 80
    ys = np.mgrid[0:h, 0:w][0].astype(np.float32)
    depth = np.where(ys >= 30, 2.0, 10.0)  # near rocks in the lower half of the frame, a far hillside above
    flow = _translating_camera(depth)
    near = (slice(50, 60), slice(0, w))
    homography_residual = np.linalg.norm(residual_flow(flow), axis=-1)
    assert homography_residual[0][near].mean() > 1.0  # the near static ground "moves" against the homography
    ind = independent_motion(flow)
    assert ind.shape == (1, h, w)
    assert ind[0][near].max() < 0.05  # static, near or far: it satisfies the epipolar constraint
    assert ind[0, 12:22, 30:40].min() > 1.5  # the square moves across its epipolar lines (3 px vertically)


def test_planar_background_has_no_epipolar_distance():
    """On a plane F is not determined (any [e']ₓH fits it) and RANSAC could pick one the object fits as
    well; model selection must then keep the homography, whose residual already holds the object's
    motion: the distance is NaN (nothing beyond it), not a wrong F's."""
    flow = _translating_camera(np.full((60, 80), 5.0))
    assert np.isnan(independent_motion(flow)).all()
    assert np.linalg.norm(residual_flow(flow), axis=-1)[0, 12:22, 30:40].min() > 2.9


def test_flow_noise_on_a_planar_background_is_not_taken_for_depth():
    """F fits noise better than H (one more dimension); GRIC charges it for that, provided both residuals are
    measured alike (in the flow's target, where its error is). The symmetric Sampson distance halved F's
    squared residuals and chose F on every one of these noisy planar fields."""
    rng = np.random.default_rng(0)
    for seed in range(5):
        flow = _translating_camera(np.full((120, 160), 5.0), square=(slice(30, 60), slice(60, 90)))
        flow += rng.normal(0.0, 1.0, flow.shape).astype(np.float32)
        assert np.isnan(independent_motion(flow, seed=seed)).all()


def test_two_layer_residual_removes_both_depth_layers_whichever_ransac_fits_first():
    """Near rocks and a far hillside, nearly equal in the border sample: one homography fits either layer
    depending on the sample, and leaves the other's parallax as "motion"; with the second layer neither
    static layer moves, at any seed, while the square moving across its epipolar lines still does."""
    h, w = 60, 80
    ys = np.mgrid[0:h, 0:w][0]
    flow = _translating_camera(np.where(ys >= 30, 2.0, 10.0))
    square = (0, slice(12, 22), slice(30, 40))
    fitted_layers = set()
    for seed in range(4):
        one = np.linalg.norm(residual_flow(flow, seed=seed), axis=-1)
        fitted_layers.add(bool(one[0, 50:].mean() < 0.05))  # which layer the single homography took
        assert max(one[0, :8].mean(), one[0, 50:].mean()) > 10.0  # the other layer's parallax stays
        two = np.linalg.norm(residual_flow(flow, layers=2, seed=seed), axis=-1)
        assert two[0, :8].max() < 0.05 and two[0, 50:].max() < 0.05
        assert two[square].min() > 1.5
    assert fitted_layers == {True, False}  # the flip this guards against happens on this scene
    assert len(background_layers(flow[0])) == 2


def test_second_layer_is_not_fitted_to_an_object_on_a_planar_background():
    """A planar background (GRIC keeps H) has no second static layer, however big the moving object."""
    flow = _translating_camera(np.full((60, 80), 5.0), square=(slice(5, 55), slice(10, 70)))
    assert len(background_layers(flow[0])) == 1
    np.testing.assert_array_equal(residual_flow(flow, layers=2), residual_flow(flow))


def _parallax_video(frames=10, size=(48, 64), seed=0, near_motion=4.0):
    """A camera translating over a far background and near rocks (bottom 40%, parallax: ``near_motion``
    px/frame against the background's 1), and a small object moving on its own (down, 1.5 px/frame)."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    camera = np.where(ys >= 0.6 * h, near_motion, 1.0)
    masks = np.stack([(np.abs(ys - (8 + 1.5 * t)) <= 4) & (np.abs(xs - 32) <= 5) for t in range(frames)])
    fwd = np.zeros((frames - 1, h, w, 2), np.float32)
    fwd[..., 0] = camera
    fwd[masks[:-1]] = (0.0, 1.5)
    bwd = -np.stack([np.where(m[..., None], np.float32((0.0, 1.5)), np.stack([camera, 0 * camera], -1)) for m in masks[1:]])
    rgb = np.random.default_rng(seed).integers(0, 255, (frames, h, w, 3), dtype=np.uint8)
    return MethodInput(rgb, BidirectionalFlow(fwd.astype(np.float32), bwd.astype(np.float32))), masks


def test_ike_epipolar_feature_takes_the_static_scenes_parallax_out_of_the_object():
    """The homography's residual leaves the near rocks' parallax, which the graph scores as motion: a third of
    the soft mass falls on the static scene. Their distance from the background's epipolar geometry is ~0,
    the object's is not, so with that feature the static scene's share falls and the mask follows the object."""
    inp, masks = _parallax_video()
    ike = get_method("ike")
    kw = {"cycles": 1, "graph.stride": 1, "graph.chain_length": 6, "features.window": 2}

    def measures(soft):
        pred = soft > 0.5
        return soft[~masks].sum() / soft.sum(), (pred & masks).sum() / (pred | masks).sum()

    plain_share, plain_iou = measures(ike.run(inp, ike.config({**kw, "features.epipolar": False})).soft)
    epi_share, epi_iou = measures(ike.run(inp, ike.config({**kw, "features.epipolar": True})).soft)
    assert plain_share > 0.3 and epi_share < 0.7 * plain_share, (plain_share, epi_share)
    assert epi_iou > max(plain_iou, 0.85), (plain_iou, epi_iou)


def test_ike_two_layer_background_finds_the_object_without_the_epipolar_feature():
    """The same scene through the motion channels alone: with the near rocks as a second background layer
    their parallax no longer competes with the object, which the single homography's residual lost. (At
    4 px/frame one homography bends across both layers, leaving neither 2 px off it: no second layer.)"""
    inp, masks = _parallax_video(near_motion=8.0)
    ike = get_method("ike")
    kw = {"cycles": 1, "graph.stride": 1, "graph.chain_length": 6, "features.window": 2, "features.epipolar": False}
    pred = ike.run(inp, ike.config({**kw, "features.background_layers": 2})).soft > 0.5
    assert (pred & masks).sum() / (pred | masks).sum() > 0.7
    plain = ike.run(inp, ike.config({**kw, "features.background_layers": 1})).soft > 0.5
    assert (plain & masks).sum() / (plain | masks).sum() < 0.3
