"""RAFT (torchvision's model, official checkpoints): key map and strict loading, fidelity to the
official model, accuracy, padding, download."""
from __future__ import annotations

import http.server
import io
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vosbatch.data import download
from vosbatch.data.download import DownloadError
from vosbatch.flow import create_flow, resize_flow
from vosbatch.flow.raft import (
    InputPadder,
    RAFTCheckpointError,
    RAFTFlow,
    build_raft,
    estimate_flow,
    load_checkpoint,
    official_key_map,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models"
WEIGHTS = MODELS / "raft-small.pth"
REFERENCE = MODELS / "raft-small-reference"
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"official RAFT-small checkpoint not available at {WEIGHTS}"
)
needs_reference = pytest.mark.skipif(
    not (WEIGHTS.is_file() and REFERENCE.is_dir()),
    reason=f"official RAFT-small checkpoint or reference flows not available under {MODELS}",
)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    """No test may pick up a developer's weights or cache, nor download anything real."""
    monkeypatch.delenv("VOSBATCH_RAFT_WEIGHTS", raising=False)
    monkeypatch.setenv("VOSBATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VOSBATCH_RAFT_URL", "http://127.0.0.1:9/unreachable.zip")


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _official_state(model) -> dict:
    """``model``'s weights under the authors' names (the key map inverted), as their code saves them."""
    state = model.state_dict()
    return {official: state[name] for official, name in official_key_map(model).items()}


# --- checkpoints ------------------------------------------------------------------------------


@needs_weights
def test_official_small_checkpoint_loads_strictly_and_matches_key_list():
    model = build_raft(small=True)
    expected = {}
    for line in (MODELS / "raft-small.keys.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        expected[key.removeprefix("module.")] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    assert {k: tuple(v.shape) for k, v in _official_state(model).items()} == expected
    load_checkpoint(model, WEIGHTS)
    loaded = _official_state(model)
    for key, value in torch.load(WEIGHTS, map_location="cpu", weights_only=True).items():
        assert torch.equal(loaded[key.removeprefix("module.")], value), key


@needs_reference
@pytest.mark.parametrize("iters", [12, 20])
@pytest.mark.parametrize("seq, i", [("blackswan", 10), ("breakdance", 20), ("dog", 30)])
def test_reproduces_official_raft_small(seq, i, iters):
    im1 = _rgb(REFERENCE / f"{seq}_{i:05d}_240x432.png")
    im2 = _rgb(REFERENCE / f"{seq}_{i + 1:05d}_240x432.png")
    reference = np.load(REFERENCE / f"{seq}_{i:05d}_{i + 1:05d}_iters{iters}_flow.npy")
    backend = create_flow("raft-small", weights=str(WEIGHTS), iters=iters, device="cpu")
    flow = backend.pair_batch(im1[None], im2[None])[0]
    assert flow.shape == reference.shape and flow.dtype == np.float32
    assert np.linalg.norm(flow - reference, axis=-1).mean() < 0.01  # measured: < 1e-5


def test_full_key_map_has_the_official_layout():
    """Names and shapes of the authors' full RAFT (BasicEncoder, SepConvGRU, mask head), written out
    here rather than derived from the key map: 169 tensors plus 10 batch-norm entries stored twice."""
    state = _official_state(build_raft(small=False))
    assert len(state) == 179
    for key, shape in [
        ("fnet.conv1.weight", (64, 3, 7, 7)),
        ("fnet.layer1.0.conv2.weight", (64, 64, 3, 3)),
        ("fnet.conv2.weight", (256, 128, 1, 1)),
        ("cnet.norm1.running_var", (64,)),
        ("cnet.layer2.0.norm3.running_mean", (96,)),
        ("cnet.layer2.0.downsample.1.running_mean", (96,)),
        ("cnet.layer3.1.norm2.num_batches_tracked", ()),
        ("update_block.encoder.convc2.weight", (192, 256, 3, 3)),
        ("update_block.encoder.conv.weight", (126, 256, 3, 3)),
        ("update_block.gru.convz1.weight", (128, 384, 1, 5)),
        ("update_block.gru.convq2.weight", (128, 384, 5, 1)),
        ("update_block.flow_head.conv1.weight", (256, 128, 3, 3)),
        ("update_block.mask.0.weight", (256, 128, 3, 3)),
        ("update_block.mask.2.weight", (576, 256, 1, 1)),
    ]:
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("small", [True, False], ids=["small", "full"])
@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "dataparallel"])
def test_random_checkpoint_roundtrip(tmp_path, small, prefix):
    """A checkpoint in the official layout goes through the real loading path and gives the same
    weights and the same flow as the model it was saved from."""
    torch.manual_seed(0)
    model = build_raft(small=small).eval()
    if not small:  # non-trivial batch-norm statistics must survive too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "random.pth"
    torch.save({prefix + k: v for k, v in _official_state(model).items()}, path)

    backend = RAFTFlow(small=small, weights=path, iters=2, device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(backend.model.state_dict()[key], value), key
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 128, 136, 3), dtype=np.uint8)  # multiples of 8, >= 128: no padding
    b = np.roll(a, 2, axis=2)
    with torch.inference_mode():
        expected = estimate_flow(model, *(torch.from_numpy(x).permute(0, 3, 1, 2).float() for x in (a, b)), iters=2)
    np.testing.assert_allclose(backend.pair_batch(a, b), expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_wrong_architecture_or_not_a_checkpoint_names_the_file(tmp_path):
    small_state = _official_state(build_raft(small=True))
    small = tmp_path / "small.pth"
    torch.save(small_state, small)
    with pytest.raises(RAFTCheckpointError, match=r"small\.pth does not match the RAFT \(full\) architecture.*missing"):
        create_flow("raft", weights=str(small), device="cpu")

    odd = tmp_path / "odd.pth"
    torch.save({**small_state, "fnet.conv1.weight": torch.zeros(32, 3, 5, 5), "extra.weight": torch.zeros(1)}, odd)
    with pytest.raises(RAFTCheckpointError, match=r"odd\.pth does not match the RAFT-small architecture; unexpected: "
                       r"extra\.weight; shape mismatch: fnet\.conv1\.weight \(32, 3, 5, 5\) vs \(32, 3, 7, 7\)$"):
        create_flow("raft-small", weights=str(odd), device="cpu")

    twins = tmp_path / "twins.pth"  # the two names of one batch norm must hold the same values
    torch.save({**_official_state(build_raft(small=False)), "cnet.layer2.0.norm3.weight": torch.zeros(96)}, twins)
    with pytest.raises(RAFTCheckpointError, match=r"twins\.pth .*differs from its duplicate: cnet\.layer2\.0\."):
        create_flow("raft", weights=str(twins), device="cpu")

    buf = io.BytesIO()
    torch.save(small_state, buf)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(RAFTCheckpointError, match=r"truncated\.pth is not a readable torch checkpoint"):
        create_flow("raft-small", weights=str(truncated), device="cpu")

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(RAFTCheckpointError, match=r"junk\.pth is not a readable torch checkpoint"):
        create_flow("raft-small", weights=str(junk), device="cpu")

    tensors = tmp_path / "tensors.pth"
    torch.save([torch.zeros(2)], tensors)
    with pytest.raises(RAFTCheckpointError, match=r"tensors\.pth does not hold a state dict"):
        create_flow("raft-small", weights=str(tensors), device="cpu")

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_flow("raft-small", weights=str(tmp_path / "missing.pth"), device="cpu")


# --- accuracy on a pair with known flow -------------------------------------------------------


def _texture(rng, h, w, scales=(24, 8, 3)):
    """Smooth multi-scale colour noise: structure at several scales, like natural images."""
    out = np.zeros((h, w, 3), np.float32)
    for s in scales:
        noise = rng.uniform(-1, 1, (h // s + 2, w // s + 2, 3)).astype(np.float32)
        up = cv2.resize(noise, (w + 2 * s, h + 2 * s), interpolation=cv2.INTER_CUBIC)[:h, :w]
        out += up * 60 * (s / max(scales)) ** 0.3
    return out


def synthetic_pair(h=124, w=172, bg=(3, -2), obj=(-6, 4), seed=0):
    """Background translated by ``bg`` pixels (x, y), a 40x40 object by ``obj``; exact GT flow."""
    rng = np.random.default_rng(seed)
    m = 16
    canvas = 110 + _texture(rng, h + 2 * m, w + 2 * m)
    patch = 150 + _texture(rng, 40, 40, (10, 4)) * np.float32([1.2, 0.6, 0.3])  # warmer, finer
    frame1 = canvas[m : m + h, m : m + w].copy()
    # I2(x) = I1(x - d): crop the canvas shifted the other way.
    frame2 = canvas[m - bg[1] : m - bg[1] + h, m - bg[0] : m - bg[0] + w].copy()
    y0, x0 = h // 2 - 20, w // 2 - 20
    frame1[y0 : y0 + 40, x0 : x0 + 40] = patch
    frame2[y0 + obj[1] : y0 + obj[1] + 40, x0 + obj[0] : x0 + obj[0] + 40] = patch
    gt = np.empty((h, w, 2), np.float32)
    gt[...] = bg
    gt[y0 : y0 + 40, x0 : x0 + 40] = obj
    to_u8 = lambda f: np.clip(f, 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(frame1), to_u8(frame2), gt


@needs_weights
def test_raft_small_recovers_known_motion_on_odd_size():
    f1, f2, gt = synthetic_pair()  # 124x172: not multiples of 8, so padding is exercised
    flow = create_flow("raft-small", weights=str(WEIGHTS), device="cpu").pair_batch(f1[None], f2[None])[0]
    assert flow.shape == gt.shape
    epe = np.linalg.norm(flow - gt, axis=-1)
    zero = np.linalg.norm(gt, axis=-1).mean()
    assert epe.mean() < 0.3 * zero, (epe.mean(), zero)  # measured: 0.44 vs 3.88
    # The object, moving against the background, is tracked too (inside, away from its edges).
    y0, x0 = 124 // 2 - 20, 172 // 2 - 20
    assert epe[y0 + 5 : y0 + 35, x0 + 5 : x0 + 35].mean() < 0.3 * np.hypot(6, 4)  # measured: 0.49


# --- padding and resizing ---------------------------------------------------------------------


def test_padder_replicates_centred_and_unpads_exactly():
    x = torch.arange(2 * 3 * 125 * 131, dtype=torch.float32).reshape(2, 3, 125, 131)
    padder = InputPadder(125, 131)
    padded = padder(x)
    assert padded.shape[-2:] == (128, 136)
    assert padder.pad == [2, 3, 1, 2]  # official "sintel" split: floor half before, rest after
    assert torch.equal(padded[..., 0, 2:-3], x[..., 0, :])  # replicated top row
    assert torch.equal(padded[..., 1:-2, 0], x[..., :, 0])  # replicated left column
    assert torch.equal(padder.unpad(padded), x)
    same = InputPadder(240, 432)
    assert same.pad == [0, 0, 0, 0] and same(x) is x
    assert InputPadder(20, 30).pad == [49, 49, 54, 54]  # small images grow to torchvision's 128 px minimum


def test_resize_flow_rescales_vectors():
    flow = np.empty((40, 80, 2), np.float32)
    flow[...] = (2.0, 1.0)
    small = resize_flow(flow, 20, 40)
    assert small.shape == (20, 40, 2)
    np.testing.assert_allclose(small[..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(small[..., 1], 0.5, atol=1e-6)


# --- download ---------------------------------------------------------------------------------


@pytest.fixture
def zip_server():
    """Serves ``routes[path] = (body, announced_length)`` on 127.0.0.1; counts requests."""
    routes: dict = {}
    hits: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            if self.path not in routes:
                self.send_error(404)
                return
            body, length = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes, hits
    server.shutdown()
    server.server_close()


def _models_zip(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"module." + k: v for k, v in state.items()}, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("models/raft-things.pth", b"not this one")
        zf.writestr("models/raft-small.pth", buf.getvalue())
    return out.getvalue()


def test_download_extracts_and_loads(zip_server, tmp_path, monkeypatch):
    url, routes, hits = zip_server
    torch.manual_seed(1)
    state = _official_state(build_raft(small=True))
    body = _models_zip(state)
    routes["/models.zip"] = (body, len(body))
    monkeypatch.setenv("VOSBATCH_RAFT_URL", url + "/models.zip")

    backend = create_flow("raft-small", iters=1, device="cpu")
    dest = tmp_path / "cache" / "models" / "raft-small.pth"
    assert backend.weights == dest and dest.is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["raft-small.pth"]  # no archive, no temp files
    assert torch.equal(backend.model.state_dict()["feature_encoder.convnormrelu.0.weight"], state["fnet.conv1.weight"])
    create_flow("raft-small", iters=1, device="cpu")  # now cached: no second request
    assert hits == ["/models.zip"]


def test_truncated_or_corrupt_download_fails_cleanly(zip_server, tmp_path, monkeypatch):
    url, routes, _ = zip_server
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    body = _models_zip(_official_state(build_raft(small=True)))
    routes["/truncated.zip"] = (body[: len(body) // 2], len(body))
    routes["/corrupt.zip"] = (b"<html>not a zip</html>" * 100, 2200)
    dest_dir = tmp_path / "cache" / "models"

    monkeypatch.setenv("VOSBATCH_RAFT_URL", url + "/truncated.zip")
    with pytest.raises(DownloadError, match=r"truncated\.zip"):
        create_flow("raft-small", device="cpu")
    assert not (dest_dir / "raft-small.pth").exists() and not (dest_dir / "raft-models.zip").exists()

    monkeypatch.setenv("VOSBATCH_RAFT_URL", url + "/corrupt.zip")
    with pytest.raises(DownloadError, match=r"corrupt\.zip is corrupt"):
        create_flow("raft-small", device="cpu")
    assert not (dest_dir / "raft-small.pth").exists() and not (dest_dir / "raft-models.zip").exists()
    assert not list(dest_dir.glob("*.tmp"))
