"""The maths on the run's device: an explicit CPU is the CPU default, the methods move data to and from the
device a fixed number of times per window (never once per frame), and on a GPU they agree with the CPU."""
import sys

import numpy as np
import pytest
import torch

from vosbatch.flow.base import BidirectionalFlow
from vosbatch.methods import get_method
from vosbatch.methods.base import MethodInput
from vosbatch.ops.device import resolve_device
from vosbatch.pipeline import VideoSegmenter
from vosbatch.presets import preset_config
from support.synthetic import make_video

SETTINGS = {"globalopt": {"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}},
            "ike": {"cycles": 2, "net": {"steps": 20}, "graph": {"stride": 2, "chain_length": 6}, "features": {"window": 2}}}
NO_CUDA = "no CUDA device here: the CUDA variant runs where torch.cuda.is_available()"


def _segment(method: str, device: str, frames: int = 8):
    vid = make_video(frames=frames, size=(64, 96), seed=4)
    cfg = preset_config(overrides={"method": method, "work_height": 64, "flow": "dis", "refine": "fgs",
                                   "device": device, "method_params": SETTINGS[method]})
    return VideoSegmenter(cfg).segment(vid.frames), vid


@pytest.mark.parametrize("method", ["globalopt", "ike"])
def test_an_explicit_cpu_gives_the_default_outputs(method):
    if torch.cuda.is_available():
        pytest.skip("auto means the GPU here")
    explicit, _ = _segment(method, "cpu")
    default, vid = _segment(method, "auto")
    assert np.array_equal(explicit.masks, default.masks) and np.array_equal(explicit.soft, default.soft)
    assert np.mean([(m & g).sum() / (m | g).sum() for m, g in zip(explicit.masks, vid.masks)]) > 0.6


class _Transfers:
    """Counts data crossing the host boundary: tensors from or to numpy, and copies to the CPU."""

    def __init__(self, monkeypatch):
        self.count = 0
        real_from, real_numpy, real_cpu = torch.from_numpy, torch.Tensor.numpy, torch.Tensor.cpu

        def counted(fn):
            def wrapper(*args, **kwargs):
                self.count += 1
                return fn(*args, **kwargs)
            return wrapper

        monkeypatch.setattr(torch, "from_numpy", counted(real_from))
        monkeypatch.setattr(torch.Tensor, "numpy", counted(real_numpy))
        monkeypatch.setattr(torch.Tensor, "cpu", counted(real_cpu))


@pytest.mark.parametrize("method", ["globalopt", "ike"])
def test_host_transfers_do_not_grow_with_the_window(method, monkeypatch):
    """A method that copied each frame to or from the device inside a loop would cross the boundary more
    often for a longer window; the counts for 8 and 12 frames must be equal."""
    from vosbatch.features import create_features

    m = get_method(method)
    cfg = m.config(SETTINGS[method])
    counts = []
    for t in (8, 12):
        vid = make_video(frames=t, size=(64, 96), seed=4)
        feats = create_features("colour")(vid.frames, m.feature_grid(vid.frames.shape[1:3], cfg)) if m.feature_grid else None
        inp = MethodInput(vid.frames, BidirectionalFlow(vid.forward, vid.backward), feats, device=torch.device("cpu"))
        with monkeypatch.context() as patch:
            transfers = _Transfers(patch)
            m.run(inp, cfg)
            counts.append(transfers.count)
    assert counts[0] == counts[1], counts


def _soft_on_grid(t: int, seed: int = 4):
    vid = make_video(frames=t, size=(64, 96), seed=seed)
    coarse = vid.masks[:, ::4, ::4].astype(np.float32) * 0.7 + 0.15
    return vid, np.clip(coarse + 0.1 * np.random.default_rng(seed).standard_normal(coarse.shape), 0, 1).astype(np.float32)


def test_binarisation_crosses_the_host_boundary_a_fixed_number_of_times(monkeypatch):
    """Upsampling, the colour model and the K-means cut run where the guide's device is; the frames' colours go
    there once and the full-size probabilities come back once for the smoother and the CRF, whatever the length."""
    from vosbatch.postprocess.binarize import Guide, binarize

    counts = []
    for t in (8, 12):
        vid, soft = _soft_on_grid(t)
        guide = Guide(vid.frames, torch.device("cpu"))
        with monkeypatch.context() as patch:
            transfers = _Transfers(patch)
            masks = binarize(soft, 64, 96, guide=guide, colour_weight=2.0, refine="crf")
            counts.append(transfers.count)
        assert np.mean([(m & g).sum() / (m | g).sum() for m, g in zip(masks, vid.masks)]) > 0.8
    assert counts[0] == counts[1], counts


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("method", ["globalopt", "ike"])
def test_cuda_agrees_with_the_cpu(method):
    """Tolerance: the masks' IoU with the CPU's is at least 0.95 per video (floating-point order differs on the
    GPU, and the network's training follows it)."""
    cpu, _ = _segment(method, "cpu")
    gpu, _ = _segment(method, "cuda")
    ious = [(a & b).sum() / max((a | b).sum(), 1) for a, b in zip(cpu.masks, gpu.masks)]
    assert np.mean(ious) >= 0.95, ious


def _cpu_ops():
    """A dispatch mode recording every operation whose result is a CPU tensor of more than one element."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CpuOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.cpu_ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            if any(isinstance(o, torch.Tensor) and o.device.type == "cpu" and o.numel() > 1 for o in outs):
                self.cpu_ops.append(str(func))
            return out

    return CpuOps()


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("method", ["globalopt", "ike"])
def test_on_cuda_the_methods_tensors_stay_on_the_gpu(method):
    """Every tensor an operation makes while the method runs lives on the GPU, except the few host copies
    a window needs (counted, as above)."""
    m = get_method(method)
    cfg = m.config(SETTINGS[method])
    vid = make_video(frames=8, size=(64, 96), seed=4)
    from vosbatch.features import create_features

    feats = create_features("colour")(vid.frames, m.feature_grid(vid.frames.shape[1:3], cfg)) if m.feature_grid else None
    inp = MethodInput(vid.frames, BidirectionalFlow(vid.forward, vid.backward), feats, device=torch.device("cuda"))
    with _cpu_ops() as mode:
        m.run(inp, cfg)
    print(sorted(set(mode.cpu_ops)), file=sys.stderr)
    assert len(mode.cpu_ops) < 200, sorted(set(mode.cpu_ops))  # area averaging of the CPU's motion maps, K-means samples


def test_per_frame_cpu_work_over_several_cpus_gives_the_same_masks():
    """The CRF in worker processes, the smoother and DIS in threads: the same result as one CPU."""
    from vosbatch.flow import create_flow
    from vosbatch.ops import parallel
    from vosbatch.postprocess.crf import crf_refine
    from vosbatch.postprocess.refine import smoother_refine

    vid = make_video(frames=6, size=(64, 96), seed=6)
    prob = np.clip(np.where(vid.masks, 0.8, 0.2) + 0.1 * np.random.default_rng(0).standard_normal(vid.masks.shape),
                   0, 1).astype(np.float32)
    one = (crf_refine(vid.frames, prob), smoother_refine(vid.frames, prob), create_flow("dis-fine")(vid.frames).forward)
    try:
        parallel.set_cpu_workers(2)
        two = (crf_refine(vid.frames, prob), smoother_refine(vid.frames, prob), create_flow("dis-fine")(vid.frames).forward)
    finally:
        parallel.set_cpu_workers(1)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


@pytest.mark.ray
def test_a_gpu_actor_holds_two_sequences_and_gives_a_cpu_run_s_masks(tmp_path):
    """``--gpus 1`` on a machine without a GPU: Ray still schedules a one-GPU actor (the device resolves to the
    CPU), which takes two sequences at a time with --cpus-per-gpu CPUs; its masks are a CPU actor's."""
    from vosbatch.io.store import RunStore
    from support.cli import run_cli
    from support.synthetic import write_davis_fixture

    vids = {f"s{i}": make_video(frames=8, size=(48, 64), seed=30 + i) for i in range(3)}
    root = write_davis_fixture(tmp_path / "D", vids)
    small = ["--work-height", "48", "--refine", "fgs", "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2"]
    run_cli("submit", "--data-root", root, "--output", tmp_path, "--run-id", "cpu", "--no-progress", *small)
    run_cli("submit", "--data-root", root, "--output", tmp_path, "--run-id", "gpu", "--gpus", "1", "--cpus-per-gpu", "2",
            "--no-progress", *small)
    info = RunStore(str(tmp_path / "gpu")).read_run_info()
    assert info["job"]["gpus"] == 1 and info["job"]["cpus_per_gpu"] == 2 and info["sequences_ok"] == 3
    a, b = RunStore(str(tmp_path / "cpu")).read_masks(), RunStore(str(tmp_path / "gpu")).read_masks()
    assert a.column("mask_png").to_pylist() == b.column("mask_png").to_pylist()


@pytest.mark.ray
def test_an_actor_with_several_cpus_runs_the_crf_in_processes_and_exits_quietly(tmp_path):
    """Two CPUs per actor: the CRF runs in worker processes, which the actor stops before Ray tears it down
    (killed first, they would leave resource-tracker warnings and tracebacks in the user's terminal)."""
    from vosbatch.io.store import RunStore
    from support.cli import run_cli
    from support.synthetic import write_davis_fixture

    root = write_davis_fixture(tmp_path / "D", {f"s{i}": make_video(frames=8, size=(64, 96), seed=40 + i) for i in range(2)})
    res = run_cli("submit", "--data-root", root, "--output", tmp_path, "--run-id", "r", "--workers", "1",
                  "--cpus-per-worker", "2", "--no-progress", "--work-height", "64", "-p", "spectral.grid_stride=4")
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "resource_tracker" not in out, out[-2000:]
    info = RunStore(str(tmp_path / "r")).read_run_info()
    assert info["sequences_ok"] == 2 and info["job"]["cpus_per_worker"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_on_cuda_the_binarisation_s_arithmetic_stays_on_the_gpu_and_agrees_with_the_cpu():
    """Upsampling, colour model and K-means cut on the GPU (``refine="none"``: nothing of OpenCV's), with the
    CPU's masks to within a few boundary pixels (the GPU's exp and log round differently)."""
    from vosbatch.postprocess.binarize import Guide, binarize

    vid, soft = _soft_on_grid(8)
    cpu = binarize(soft, 64, 96, guide=Guide(vid.frames, torch.device("cpu")), colour_weight=2.0, refine="none")
    with _cpu_ops() as mode:
        gpu = binarize(soft, 64, 96, guide=Guide(vid.frames, torch.device("cuda")), colour_weight=2.0, refine="none")
    assert len(mode.cpu_ops) < 10, mode.cpu_ops  # the copies in (soft, Lab, K-means samples) and the mask out
    assert (cpu != gpu).mean() < 1e-3
