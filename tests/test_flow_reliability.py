"""Flow-quality masks (photometric, forward-backward) and the on-disk flow cache."""
from __future__ import annotations

import numpy as np
import pytest

from vosbatch.flow import BidirectionalFlow, FlowBackend
from vosbatch.flow.cache import cached_flow, flow_cache_key
from vosbatch.flow.reliability import (
    consistency_reliability,
    photometric_errors,
    photometric_reliability,
)

H, W, S, SHIFT = 96, 128, 24, 12  # image, object side, object motion (x)
Y0, X0 = 36, 40


def occlusion_clip(noise=2.0, seed=0):
    """Static textured background; a square object moves SHIFT px right between the two frames.

    Returns frames (2,H,W,3), exact forward/backward flow, and the occluded region (background of
    frame 0 covered in frame 1) and the disoccluded one (background of frame 1 hidden in frame 0).
    """
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 120, (H, W, 3)).astype(np.float32)  # dark, and a bright object: every
    obj = rng.integers(160, 256, (S, S, 3)).astype(np.float32)  # occluded pixel changes colour
    f0, f1 = bg.copy(), bg.copy()
    f0[Y0 : Y0 + S, X0 : X0 + S] = obj
    f1[Y0 : Y0 + S, X0 + SHIFT : X0 + SHIFT + S] = obj
    f1 += rng.normal(0, noise, f1.shape)
    frames = np.clip(np.stack([f0, f1]), 0, 255).astype(np.uint8)
    fwd = np.zeros((1, H, W, 2), np.float32)
    fwd[0, Y0 : Y0 + S, X0 : X0 + S, 0] = SHIFT
    bwd = np.zeros((1, H, W, 2), np.float32)
    bwd[0, Y0 : Y0 + S, X0 + SHIFT : X0 + SHIFT + S, 0] = -SHIFT
    occluded = np.zeros((H, W), bool)
    occluded[Y0 : Y0 + S, X0 + S : X0 + S + SHIFT] = True
    disoccluded = np.zeros((H, W), bool)
    disoccluded[Y0 : Y0 + S, X0 : X0 + SHIFT] = True
    return frames, BidirectionalFlow(fwd, bwd), occluded, disoccluded


@pytest.mark.parametrize("grey", [True, False])
def test_photometric_mask_flags_occlusions(grey):
    frames, flow, occluded, disoccluded = occlusion_clip()
    rel = photometric_reliability(frames, flow, percentile=90, grey=grey)
    assert rel.forward.shape == rel.backward.shape == (1, H, W) and rel.forward.dtype == bool
    assert not rel.forward[0][occluded].any()  # frame 0 pixels whose match is hidden in frame 1
    assert not rel.backward[0][disoccluded].any()  # frame 1 pixels not visible in frame 0
    # About 10 % of each frame is flagged, the rest (right flow, only noise) is reliable.
    for mask in (rel.forward[0], rel.backward[0]):
        assert 0.85 <= mask.mean() <= 0.92


def test_photometric_errors_and_out_of_image_matches():
    frames, flow, occluded, _ = occlusion_clip(noise=0.0)
    err_f, err_b, in_f, in_b = photometric_errors(frames, flow)
    assert err_f.shape == (1, H, W) and in_f.all() and in_b.all()
    assert np.all(err_f[0][~occluded] < 1e-3)
    assert err_f[0][occluded].mean() > 20  # grey levels
    # A flow pointing out of the image is unreliable, however small its error looks.
    out = BidirectionalFlow(flow.forward.copy(), flow.backward.copy())
    out.forward[0, :, :4, 0] = -10.0
    rel = photometric_reliability(frames, out, percentile=100)
    assert not rel.forward[0][:, :4].any() and rel.forward[0][:, 4:][~occluded[:, 4:]].all()


def test_forward_backward_consistency():
    frames, flow, occluded, disoccluded = occlusion_clip()
    rel = consistency_reliability(flow)
    assert not rel.forward[0][occluded].any() and not rel.backward[0][disoccluded].any()
    assert rel.forward[0][~occluded].all() and rel.backward[0][~disoccluded].all()

    # Corrupt a block of the forward flow: it no longer agrees with the backward flow.
    bad = BidirectionalFlow(flow.forward.copy(), flow.backward.copy())
    bad.forward[0, 5:25, 70:100] = (3.0, -4.0)
    rel_bad = consistency_reliability(bad)
    assert not rel_bad.forward[0, 5:25, 70:100].any()
    assert rel_bad.forward[0, 40:90, :30].all()
    # Tolerance grows with the magnitude: a 5 % error on a 40 px motion is accepted (Sundaram et al.).
    big = np.zeros((1, H, W, 2), np.float32)
    big[..., 0] = 40.0
    ok = BidirectionalFlow(big, -big * 1.05)
    assert consistency_reliability(ok).forward[0][:, :W - 45].all()


class CountingFlow(FlowBackend):
    name = "counting"

    def __init__(self):
        self.calls = 0

    def pair_batch(self, sources, targets):
        self.calls += 1
        n, h, w, _ = sources.shape
        out = np.empty((n, h, w, 2), np.float32)
        out[..., 0] = sources[..., 0] / 7.0 - targets[..., 1] / 3.0
        out[..., 1] = 1.0 / 3.0
        return out


def test_flow_cache_roundtrip_keys_and_corruption(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    backend = CountingFlow()
    first = cached_flow(backend, frames, tmp_path)
    assert backend.calls == 2  # forward + backward
    files = list(tmp_path.iterdir())
    assert [p.suffix for p in files] == [".npz"]  # no temp files left behind
    with np.load(files[0]) as z:
        assert z["forward"].dtype == np.float16
    second = cached_flow(backend, frames, tmp_path)
    assert backend.calls == 2
    np.testing.assert_array_equal(first.forward, second.forward)
    exact = backend(frames)
    np.testing.assert_allclose(second.backward, exact.backward, rtol=1e-3, atol=1e-3)

    # The key follows content, resolution, the backend's fingerprint and key_extra.
    changed = frames.copy()
    changed[1, 0, 0, 0] ^= 1
    keys = {
        flow_cache_key(backend, frames),
        flow_cache_key(backend, changed),
        flow_cache_key(backend, frames[:, :8]),
        flow_cache_key(backend, frames, key_extra="x"),
    }
    backend.fingerprint = "counting-weights123-iters20"
    keys.add(flow_cache_key(backend, frames))
    assert len(keys) == 5

    # A corrupt entry is recomputed and rewritten, not trusted.
    del backend.fingerprint
    files[0].write_bytes(b"garbage")
    again = cached_flow(backend, frames, tmp_path)
    assert backend.calls == 4 + 2  # 2 for `exact`, 2 for the recomputation
    np.testing.assert_array_equal(again.forward, first.forward)
    assert cached_flow(backend, frames, None).forward.dtype == np.float32  # no cache dir: plain call
