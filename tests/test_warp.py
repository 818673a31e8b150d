"""Backward warping and flow resizing: the geometry everything else relies on."""
import numpy as np
import torch

from vosbatch.flow.base import BidirectionalFlow, resize_flow
from vosbatch.ops.warp import backward_warp


def test_mask_warped_by_known_translation_lands_where_it_should():
    # A square on frame s; the object moves by (+3, +2) px from s to t, so flow t->s is (-3, -2).
    src = torch.zeros(1, 1, 20, 30, dtype=torch.float64)
    src[0, 0, 5:10, 4:9] = 1.0
    flow_t_to_s = torch.zeros(1, 20, 30, 2, dtype=torch.float64)
    flow_t_to_s[..., 0] = -3.0
    flow_t_to_s[..., 1] = -2.0
    warped, valid = backward_warp(src, flow_t_to_s)
    expected = torch.zeros_like(src)
    expected[0, 0, 7:12, 7:12] = 1.0
    assert torch.allclose(warped, expected)
    # pixels whose sample point leaves the image are flagged invalid
    assert valid[0, 0, :2, :].sum() == 0 and valid[0, 0, :, :3].sum() == 0
    assert valid[0, 0, 2:, 3:].all()


def test_subpixel_warp_interpolates_linearly():
    ramp = torch.arange(10, dtype=torch.float64).repeat(4, 1)[None, None]  # value = x
    flow = torch.full((1, 4, 10, 2), 0.0, dtype=torch.float64)
    flow[..., 0] = 0.25
    warped, _ = backward_warp(ramp, flow)
    assert torch.allclose(warped[0, 0, :, :9], ramp[0, 0, :, :9] + 0.25)


def test_resize_flow_rescales_vectors():
    flow = np.zeros((3, 40, 80, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, 1.0
    small = resize_flow(flow, 20, 40)
    assert small.shape == (3, 20, 40, 2)
    assert np.allclose(small[..., 0], 1.0) and np.allclose(small[..., 1], 0.5)
    anis = resize_flow(flow, 40, 160)  # only x is stretched
    assert np.allclose(anis[..., 0], 4.0) and np.allclose(anis[..., 1], 1.0)
    bf = BidirectionalFlow(flow, -flow).resized(10, 20)
    assert np.allclose(bf.backward[..., 0], -0.5)
