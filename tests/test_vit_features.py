"""ViT (DINO / DINOv2 through timm) feature backend: shapes, keys, checkpoint loading. Random init only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")

from vosbatch.features import available_features, create_features  # noqa: E402
from vosbatch.features.vit import FeatureCheckpointError, ViTFeatures, build_vit, load_vit_checkpoint  # noqa: E402

S16 = "vit_small_patch16_224.dino"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def keys_backend() -> ViTFeatures:
    return ViTFeatures(S16, output="keys", device="cpu", seed=0, batch_size=1)


@pytest.fixture(scope="module")
def s16_state(keys_backend):
    return {k: v.clone() for k, v in keys_backend.model.state_dict().items()}


def _unit(f) -> bool:
    return np.allclose(np.linalg.norm(_host(f), axis=-1), 1.0, atol=1e-4)


def _host(f):
    """The backend leaves its features on its device (a tensor); the method takes them from there."""
    assert isinstance(f, torch.Tensor) and f.dtype == torch.float32
    return f.cpu().numpy()


def test_registered_names():
    names = set(available_features())
    assert {"dino-vits16", "dino-vits8", "dino-vitb16", "dino-vitb8", "dinov2-vits14"} <= names


@pytest.mark.parametrize("output", ["keys", "tokens"])
def test_shape_dtype_norm(frames, output, keys_backend):
    be = keys_backend if output == "keys" else create_features("dino-vits16", output="tokens", device="cpu")
    assert be.name == "dino-vits16" or output == "keys"
    f = _host(be(frames, (4, 6)))  # one token per cell: 64x96 input
    assert f.shape == (2, 4, 6, 384)
    assert np.isfinite(f).all() and np.allclose(np.linalg.norm(f, axis=-1), 1.0, atol=1e-4)
    # requested grids other than the token grid, non-square frames (64x112), both down and up sampling
    wide = np.ascontiguousarray(np.concatenate([frames, frames[:, :, :16]], axis=2))
    assert wide.shape[1:3] == (64, 112)
    for grid in [(3, 5), (5, 9), (2, 2)]:
        g = be(wide, grid)
        assert tuple(g.shape) == (2, *grid, 384) and _unit(g)
    be_fixed = ViTFeatures(S16, output=output, image_size=48, device="cpu")  # 48x80 input -> 3x5 tokens
    assert be_fixed.input_size((64, 112), (4, 7)) == (48, 80)
    g = be_fixed(wide, (4, 7))
    assert tuple(g.shape) == (2, 4, 7, 384) and _unit(g)


def test_batching_does_not_change_features(frames, keys_backend):
    one = keys_backend(frames, (4, 6))
    both = ViTFeatures(S16, device="cpu", seed=0, batch_size=2)(frames, (4, 6))
    np.testing.assert_allclose(one, both, atol=1e-5)


def test_keys_are_keys(frames, keys_backend):
    m = keys_backend.model
    x = keys_backend.preprocess(frames, (64, 96))
    with torch.inference_mode():
        t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for blk in m.blocks[:-1]:
            t = blk(t)
        qkv = m.blocks[-1].attn.qkv(m.blocks[-1].norm1(t))
        B, N, _ = qkv.shape
        heads = m.blocks[-1].attn.num_heads
        q, k, v = qkv.reshape(B, N, 3, heads, 384 // heads).permute(2, 0, 3, 1, 4)  # timm's own split
        k = k.transpose(1, 2).reshape(B, N, 384)[:, 1:]  # merge heads, drop CLS
        q = q.transpose(1, 2).reshape(B, N, 384)[:, 1:]
        manual = F.normalize(k, dim=-1).reshape(B, 4, 6, 384).numpy()
        manual_q = F.normalize(q, dim=-1).reshape(B, 4, 6, 384).numpy()
    got = keys_backend(frames, (4, 6))
    np.testing.assert_allclose(got, manual, atol=1e-5)
    assert not np.allclose(got, manual_q, atol=1e-3)
    tokens = ViTFeatures(S16, output="tokens", device="cpu", seed=0)(frames, (4, 6))
    assert not np.allclose(got, tokens, atol=1e-3)


def _layouts(sd):
    head = {"head.mlp.0.weight": torch.zeros(8, 384), "head.last_layer.weight_g": torch.ones(8, 1)}
    return {
        "plain": sd,
        "teacher": {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **head}, "epoch": 3},
        "student": {"student": {f"module.backbone.{k}": v for k, v in sd.items()}, "epoch": 3},
    }


@pytest.mark.parametrize("layout", ["plain", "teacher", "student"])
def test_checkpoint_layouts_roundtrip(tmp_path, frames, keys_backend, s16_state, layout):
    path = tmp_path / f"{layout}.pth"
    torch.save(_layouts(s16_state)[layout], path)
    fresh = build_vit(S16)
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, s16_state["blocks.0.attn.qkv.weight"])
    load_vit_checkpoint(fresh, path)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, s16_state[k]), k
    reloaded = ViTFeatures(S16, weights=str(path), device="cpu", seed=123)
    np.testing.assert_array_equal(reloaded(frames, (4, 6)), keys_backend(frames, (4, 6)))


def test_wrong_architecture_is_named(tmp_path):
    torch.manual_seed(0)
    base = build_vit("vit_base_patch16_224.dino")
    path = tmp_path / "vitb16.pth"
    torch.save(base.state_dict(), path)
    del base
    with pytest.raises(FeatureCheckpointError) as ei:
        load_vit_checkpoint(build_vit(S16), path)
    msg = str(ei.value)
    assert str(path) in msg and "vit_small" in msg and "embed 384" in msg and "768" in msg and "shape mismatch" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path, s16_state):
    sd = dict(s16_state)
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(FeatureCheckpointError, match=r"missing key.*norm\.weight.*unexpected key.*extra\.weight"):
        load_vit_checkpoint(build_vit(S16), path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(FeatureCheckpointError, match="not a PyTorch checkpoint") as ei:
        ViTFeatures(S16, weights=str(path), device="cpu")
    assert str(path) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_dinov2_non_square():
    rng = np.random.default_rng(1)
    fr = rng.integers(0, 256, size=(2, 56, 84, 3), dtype=np.uint8)
    be = create_features("dinov2-vits14", device="cpu")
    assert be.patch == (14, 14)
    f = be(fr, (4, 6))  # 56x84 input: a 4x6 token grid
    assert tuple(f.shape) == (2, 4, 6, 384) and _unit(f)
    g = be(fr, (3, 5))  # resampled to the requested grid
    assert tuple(g.shape) == (2, 3, 5, 384) and _unit(g)


def test_pipeline_uses_the_feature_checkpoint_given_in_the_config(tmp_path):
    """RunConfig.feature_weights reaches the backend: a wrong file fails, a right one runs end to end."""
    import timm
    import torch

    from vosbatch.config import RunConfig
    from vosbatch.features.vit import FeatureCheckpointError
    from vosbatch.pipeline import VideoSegmenter
    from support.synthetic import make_video

    good = tmp_path / "vits16.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in
                            timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0).state_dict().items()}}, good)
    bad = tmp_path / "not-a-checkpoint.pth"
    bad.write_text("hello")
    with pytest.raises(FeatureCheckpointError, match="not-a-checkpoint.pth"):
        VideoSegmenter(RunConfig(features="dino-vits16", feature_weights=str(bad)))
    vid = make_video(frames=3, size=(64, 96), seed=0)
    cfg = RunConfig(features="dino-vits16", feature_weights=str(good), method_params={"spectral": {"grid_stride": 16}, "optimisation": {"stride": 4}})
    res = VideoSegmenter(cfg).segment(vid.frames)
    assert res.masks.shape == (3, 64, 96) and "features" in res.seconds
