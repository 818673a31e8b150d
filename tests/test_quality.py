"""The quality estimate: signals that see a bad mask without ground truth, the stored estimate, and the
filters that use it (export, the Python API), refusing runs that have none."""
import json

import numpy as np
import pytest

from vosbatch.errors import InputError
from vosbatch.evaluation import export_pngs
from vosbatch.flow.base import BidirectionalFlow
from vosbatch.io.store import RunStore
from vosbatch.quality import FRAME_SIGNALS, LogisticModel, QualityModel, frame_signals, load_model, sequence_signals
from support.runs import make_run
from support.synthetic import make_video, write_davis_fixture


def _soft(masks, noise, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.where(masks, 0.9, 0.1) + noise * rng.standard_normal(masks.shape), 0, 1).astype(np.float32)


def test_signals_tell_a_consistent_mask_from_a_flickering_one():
    vid = make_video(frames=8, size=(48, 64), obj_size=(10, 14), seed=1)
    flow = BidirectionalFlow(vid.forward, vid.backward)
    good = _soft(vid.masks, 0.05)
    bad = good.copy()
    bad[::2] = _soft(np.roll(vid.masks[::2], 20, axis=2), 0.05)  # every other frame elsewhere
    s_good = frame_signals(good, {"init": good}, flow, vid.masks)
    s_bad = frame_signals(bad, {"init": good}, flow, np.where(np.arange(8)[:, None, None] % 2 == 0,
                                                              np.roll(vid.masks, 20, axis=2), vid.masks))
    assert set(s_good) == set(FRAME_SIGNALS) and all(v.shape == (8,) for v in s_good.values())
    assert s_good["temporal_iou"].mean() > 0.8 > s_bad["temporal_iou"].mean() + 0.3
    assert s_good["stage_iou"].mean() > 0.9 > s_bad["stage_iou"].mean() + 0.3
    assert s_good["refine_iou"].min() > 0.8 and np.allclose(s_good["area"], vid.masks.reshape(8, -1).mean(1))
    seq = sequence_signals(s_good)
    assert seq["area_cv"] < 0.1 and seq["temporal_iou"] == pytest.approx(s_good["temporal_iou"].mean())


def test_a_method_s_own_signals_pass_through_and_unknown_or_misshapen_ones_are_refused():
    vid = make_video(frames=5, size=(32, 48), seed=4)
    flow = BidirectionalFlow(vid.forward, vid.backward)
    soft = vid.masks.astype(np.float32)
    cut = np.linspace(0.1, 0.5, 5)
    out = frame_signals(soft, {}, flow, vid.masks, {"spectral_cut": cut})
    assert np.array_equal(out["spectral_cut"], cut) and set(out) == {*FRAME_SIGNALS, "spectral_cut"}
    with pytest.raises(ValueError, match="eigengap"):
        frame_signals(soft, {}, flow, vid.masks, {"eigengap": cut})
    with pytest.raises(ValueError, match="shape"):
        frame_signals(soft, {}, flow, vid.masks, {"spectral_cut": cut[:4]})


def test_stage_agreement_is_with_the_first_motion_only_stage():
    """IKE's later graphs and nets learn from each other, so the output is compared with graph1."""
    vid = make_video(frames=6, size=(48, 64), obj_size=(10, 14), seed=4)
    flow = BidirectionalFlow(vid.forward, vid.backward)
    good = _soft(vid.masks, 0.05)
    elsewhere = _soft(np.roll(vid.masks, 20, axis=2), 0.05)
    agree = frame_signals(good, {"graph1": good, "net1": elsewhere, "graph2": elsewhere}, flow, vid.masks)
    disagree = frame_signals(good, {"graph1": elsewhere, "net1": good, "graph2": good}, flow, vid.masks)
    assert agree["stage_iou"].min() > 0.9 and disagree["stage_iou"].max() < 0.5


def test_the_model_is_a_monotone_logistic_function_stored_as_json_and_a_sequence_is_its_frames_mean():
    model = QualityModel("globalopt", LogisticModel(-3.0, {"stage_iou": 4.0}))
    again = QualityModel.from_json(model.to_json())
    pred = again.frames({"stage_iou": np.array([0.0, 0.5, 1.0])})
    assert np.all(np.diff(pred) > 0) and 0 < pred.min() and pred.max() < 1
    assert pred[1] == pytest.approx(1 / (1 + np.exp(-(-3.0 + 2.0))))
    assert again.sequence(pred) == pytest.approx(pred.mean())


@pytest.mark.parametrize("method", ["globalopt", "ike"])
def test_each_method_ships_a_model_that_rewards_agreement_and_penalises_border_contact(method):
    model = load_model(method)
    assert model is not None and model.method == method and "DAVIS 2016 val" in model.fitted_on
    base = {n: np.array([0.8]) for n in model.frame.weights}
    base["border"] = np.array([0.0])
    for name, step in (("stage_iou", 0.15), ("temporal_iou", 0.15), ("refine_iou", 0.15), ("border", -0.15),
                       ("spectral_cut", -0.15)):
        if name in base:
            moved = dict(base, **{name: base[name] + step})
            assert model.frames(moved)[0] >= model.frames(base)[0], name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run with an estimate (a stand-in model: higher temporal agreement, higher quality) and one without."""
    import vosbatch.quality as quality

    tmp = tmp_path_factory.mktemp("quality")
    vids = {"steady": make_video(frames=6, size=(48, 64), seed=2),
            "still": make_video(frames=6, size=(48, 64), obj_velocity=(0.0, 0.0), bg_velocity=(0.0, 0.0), seed=3)}
    root = write_davis_fixture(tmp / "D", vids)
    model = QualityModel("globalopt", LogisticModel(-8.0, {"temporal_iou": 8.0, "stage_iou": 4.0}))
    original = quality.load_model
    try:
        quality.load_model = lambda method: model
        make_run(root, tmp / "with")
        quality.load_model = lambda method: None  # as for a method without a fitted model: signals, no estimate
        make_run(root, tmp / "without")
    finally:
        quality.load_model = original
    return tmp


def test_every_frame_and_sequence_stores_its_signals_and_estimate(runs):
    store = RunStore(str(runs / "with"))
    rows = {r["sequence"]: r for r in store.read_metrics()}
    for name, row in rows.items():
        assert 0 <= row["quality"] <= 1 and {"area_cv", *FRAME_SIGNALS} <= set(json.loads(row["quality_signals"]))
        masks = store.read_masks(sequence=name)
        q = masks.column("quality").to_pylist()
        assert len(q) == 6 and all(0 <= v <= 1 for v in q) and row["quality"] == pytest.approx(np.mean(q), abs=1e-6)
        # globalopt adds its spectral cut, one value per frame, each a relaxed normalised cut in [0, 2]
        frame_rows = [json.loads(v.as_py()) for v in masks.column("quality_signals")]
        assert set(frame_rows[0]) == {*FRAME_SIGNALS, "spectral_cut"}
        assert all(0.0 <= r["spectral_cut"] <= 2.0 for r in frame_rows)
    plain = RunStore(str(runs / "without")).read_metrics()
    assert all(r["quality"] is None and r["quality_signals"] for r in plain)


def test_export_keeps_what_passes_and_refuses_runs_without_an_estimate(runs, tmp_path):
    store = RunStore(str(runs / "with"))
    quality = {r["sequence"]: r["quality"] for r in store.read_metrics()}
    cut = float(np.mean(list(quality.values())))
    n = export_pngs(str(runs / "with"), tmp_path / "seq", min_quality=cut)
    kept = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert kept == sorted(k for k, v in quality.items() if v >= cut) and n == 6 * len(kept)
    frames = [v for name in quality for v in store.read_masks(sequence=name).column("quality").to_pylist()]
    fcut = float(np.median(frames))
    n = export_pngs(str(runs / "with"), tmp_path / "frames", min_frame_quality=fcut)
    assert n == sum(v >= fcut for v in frames) and len(list((tmp_path / "frames").rglob("*.png"))) == n
    with pytest.raises(InputError, match="has no quality estimate"):
        export_pngs(str(runs / "without"), tmp_path / "none", min_quality=0.1)
    assert not (tmp_path / "none").exists()


def test_export_min_quality_on_a_run_without_an_estimate_exits_non_zero(runs, tmp_path):
    from click.testing import CliRunner

    from vosbatch.cli import main

    res = CliRunner().invoke(main, ["export", str(runs / "without"), "--png", str(tmp_path / "p"), "--min-quality", "0.5"])
    assert res.exit_code == 1 and "has no quality estimate" in res.output and "Traceback" not in res.output


def test_report_compare_and_the_pseudo_label_summary_show_the_estimate(runs, tmp_path):
    import importlib.util
    from pathlib import Path

    from vosbatch.compare import compare_uris, format_comparison
    from vosbatch.report import build_report

    page = build_report(str(runs / "with"), tmp_path / "r.html", progress=False, data_root=str(runs / "D"))
    html = page.read_text()
    assert 'id="quality-plot"' in html and "Spearman ρ" in html and "est. J" in html
    text = format_comparison(compare_uris(str(runs / "without"), str(runs / "with")))
    assert "estimated J (quality" in text  # A has none, B has one
    spec = importlib.util.spec_from_file_location("pseudo_label", Path(__file__).resolve().parents[1] / "jobs" / "pseudo_label.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    summary = job.report(str(runs / "with"))["quality"]
    assert summary["videos"] == 2 and summary["frames"] == 12
    assert all(summary[f">={t}"]["videos"] <= 2 for t in job.THRESHOLDS)
    assert job.report(str(runs / "without"))["quality"] is None
