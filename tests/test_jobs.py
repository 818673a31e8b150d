"""The batch jobs in jobs/: the nightly benchmark end to end on local Ray, its baseline search (local
and S3), and the exact submit commands both jobs build, checked against the real ``submit`` parser.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vosbatch.io.store import RunStore
from support.synthetic import make_video, write_davis_fixture

REPO = Path(__file__).resolve().parents[1]


def load_job(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


nightly = load_job("nightly_benchmark")
pseudo = load_job("pseudo_label")


def run_job(script, *args, env=None):
    """Run jobs/SCRIPT as a user would; RAY_ADDRESS only when ``env`` sets it (local Ray otherwise)."""
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env.update(env or {}, RAY_USAGE_STATS_ENABLED="0", OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    env = full_env
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)


def submit_accepts(args):
    """Parse ``args`` with the real ``vosbatch submit`` options (nothing runs)."""
    from vosbatch.cli import submit

    submit.make_context("submit", list(args))


# --------------------------------------------------------------------------------------------------
# Nightly benchmark end to end
# --------------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_nightly_passes_then_compares_then_fails_on_a_regression(tmp_path):
    vids = {"walker": make_video(frames=5, size=(48, 64), obj_size=(11, 15), seed=1),
            "runner": make_video(frames=5, size=(48, 64), obj_size=(11, 15), obj_velocity=(-2.5, 0.5),
                                 bg_velocity=(1.0, 0.0), start=(25, 45), seed=2)}
    root = write_davis_fixture(tmp_path / "DAVIS", vids)
    out = tmp_path / "nightly"
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({
        "name": "test", "output": str(out), "threshold": 0.01, "workers": 1,
        "submit": {"work_height": 48, "params": {"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}}},
        "datasets": [{"name": "davis2016", "data_root": str(root), "split": "val"}]}))

    def meta(tag):
        return json.loads((out / f"nightly-{tag}-davis2016" / "nightly.json").read_text())

    first = run_job("nightly_benchmark.py", "--config", config, "--tag", "n1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no earlier passing nightly run of suite 'test'" in first.stderr
    assert meta("n1")["status"] == "passed" and meta("n1")["baseline"] is None
    assert json.loads((out / "nightly-n1-davis2016" / "run.json").read_text())["sequences_ok"] == 2

    second = run_job("nightly_benchmark.py", "--config", config, "--tag", "n2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"A (baseline):  {out / 'nightly-n1-davis2016'}" in second.stdout
    assert "configuration: identical" in second.stdout and "no regression (threshold 0.010)" in second.stdout
    assert meta("n2")["status"] == "passed" and meta("n2")["baseline"] == str(out / "nightly-n1-davis2016")
    assert (out / "nightly-n2-davis2016" / "nightly-compare.csv").is_file()

    # make night 2 look perfect: night 3, identical in fact, is now a regression on both sequences
    store = RunStore(str(out / "nightly-n2-davis2016"))
    for row in store.read_metrics():
        row.update(j_mean=1.0, f_mean=1.0)
        store.write_metrics(row.pop("dataset"), row.pop("sequence"), row)
    third = run_job("nightly_benchmark.py", "--config", config, "--tag", "n3")
    assert third.returncode == 1, third.stdout + third.stderr
    assert f"A (baseline):  {out / 'nightly-n2-davis2016'}" in third.stdout
    assert "regressed sequences (ΔJ&F < -0.010): davis2016/runner" in third.stdout
    assert "REGRESSION: overall J&F 1.000 -> " in third.stdout
    assert "1 of 1 datasets did not pass: davis2016 (regressed)" in third.stderr
    assert meta("n3")["status"] == "regressed" and "runner" in meta("n3")["regressed_sequences"]

    # the regressed night is no baseline: the next night still compares with night 2
    dry = run_job("nightly_benchmark.py", "--config", config, "--tag", "n4", "--dry-run")
    assert dry.returncode == 0 and f"compare {out / 'nightly-n2-davis2016'} {out / 'nightly-n4-davis2016'}" in dry.stdout
    assert not (out / "nightly-n4-davis2016").exists()  # a dry run writes nothing


# --------------------------------------------------------------------------------------------------
# Nightly: commands and baseline search (no Ray)
# --------------------------------------------------------------------------------------------------
def test_nightly_dry_run_builds_one_submit_per_dataset(tmp_path):
    config = tmp_path / "n.yaml"
    config.write_text(yaml.safe_dump({
        "output": "s3://nightly-jobs/nightly", "gpus": 2, "threshold": 0.02,
        "submit": {"flow": "raft-small", "params": {"optimisation": {"lam": 0.5, "enabled": True}}},
        "datasets": [{"name": "davis2016", "data_root": "${DAVIS_TEST_ROOT}"},
                     {"name": "fbms59", "data_root": "${UNSET_TEST_ROOT}", "split": "test", "gpus": 0, "workers": 3,
                      "sequences": ["cars1", "cars2"], "submit": {"flow": "dis"}}]}))
    cfg = nightly.load_config(config)
    plans = nightly.plan_datasets(cfg, "20260101-020000", ["--work-height", "96"], on_cluster=True)
    assert [p.run_id for p in plans] == ["nightly-20260101-020000-davis2016", "nightly-20260101-020000-fbms59"]
    assert plans[1].run_uri == "s3://nightly-jobs/nightly/nightly-20260101-020000-fbms59"
    davis, fbms = (p.command[4:] for p in plans)  # after `python -m vosbatch.cli submit`
    assert plans[0].command[1:4] == ["-m", "vosbatch.cli", "submit"]
    assert davis == ["--dataset", "davis2016", "--gpus", "2", "--flow", "raft-small", "-p", "optimisation.enabled=true", "-p", "optimisation.lam=0.5",
                     "--output", "s3://nightly-jobs/nightly", "--run-id", "nightly-20260101-020000-davis2016",
                     "--address", "auto", "--fail-on-error", "--no-progress", "--work-height", "96"]
    assert fbms[:8] == ["--dataset", "fbms59", "--split", "test", "--sequences", "cars1,cars2", "--workers", "3"]
    assert "--data-root" not in fbms and "--gpus" not in fbms and fbms[fbms.index("--flow") + 1] == "dis"
    for p in plans:
        submit_accepts(p.command[4:])

    shipped = nightly.load_config(REPO / "jobs" / "nightly.yaml")  # the config in jobs/ builds valid commands too
    assert [d["name"] for d in shipped["datasets"]] == ["davis2016", "segtrackv2", "fbms59"]
    for p in nightly.plan_datasets(shipped, "t", [], on_cluster=False):
        submit_accepts(p.command[4:])

    res = run_job("nightly_benchmark.py", "--config", config, "--tag", "t", "--dry-run", "--datasets", "davis2016",
                  "--output", tmp_path / "out", env={"DAVIS_TEST_ROOT": "/data/davis", "RAY_ADDRESS": "127.0.0.1:6379"})
    assert res.returncode == 0, res.stderr
    assert "--data-root /data/davis" in res.stdout and "--address auto" in res.stdout and "fbms59" not in res.stdout
    res = run_job("nightly_benchmark.py", "--config", config, "--dry-run", "--datasets", "nope")
    assert res.returncode == 2 and "nope" in res.stderr


def make_night(output, tag, dataset="davis2016", suite="default", status="passed", started="2026-01-01T02:00:00",
               config_hash="h1", run_status="done"):
    """The two files the baseline search reads: run.json and nightly.json."""
    uri = nightly.join_uri(str(output), f"nightly-{tag}-{dataset}")
    RunStore(uri).write_run_info({"run_id": f"nightly-{tag}-{dataset}", "dataset": dataset, "status": run_status,
                                  "started": started, "config_hash": config_hash})
    nightly.write_file(uri, "nightly.json", json.dumps({"suite": suite, "status": status}).encode())
    return uri


def test_baseline_is_the_latest_passing_night_of_the_same_suite_and_dataset(tmp_path):
    out = tmp_path / "out"
    assert nightly.find_baseline(str(out), "davis2016", "default", "x") is None  # no output folder yet
    old = make_night(out, "a", started="2026-01-01T02:00:00")
    new = make_night(out, "b", started="2026-01-02T02:00:00", config_hash="h2")
    make_night(out, "c", started="2026-01-03T02:00:00", status="regressed")
    make_night(out, "d", started="2026-01-04T02:00:00", suite="raft")
    make_night(out, "e", started="2026-01-05T02:00:00", dataset="fbms59")
    make_night(out, "f", started="2026-01-06T02:00:00", run_status="running")
    (out / "unrelated").mkdir()
    assert nightly.find_baseline(str(out), "davis2016", "default", "nightly-z-davis2016") == new
    assert nightly.find_baseline(str(out), "davis2016", "default", "nightly-b-davis2016") == old  # not itself
    assert nightly.find_baseline(str(out), "davis2016", "default", "x", config_hash="h1") == old
    assert nightly.find_baseline(str(out), "davis2016", "raft", "x").endswith("nightly-d-davis2016")
    assert nightly.find_baseline(str(out), "fbms59", "default", "x").endswith("nightly-e-fbms59")


def test_baseline_search_on_s3(s3_bucket, moto_s3_endpoint, monkeypatch):
    from vosbatch.io.fs import configure_s3

    bucket, _ = s3_bucket
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # restored after the test
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    configure_s3(moto_s3_endpoint)  # what --s3-endpoint-url / the config's s3_endpoint_url do: every URI alike
    nights = f"s3://{bucket}/nightly"
    make_night(nights, "a", started="2026-01-01T02:00:00")
    make_night(nights, "b", started="2026-01-02T02:00:00", status="failed")
    assert nightly.list_run_names(nights) == ["nightly-a-davis2016", "nightly-b-davis2016"]
    assert nightly.find_baseline(nights, "davis2016", "default", "x") == f"{nights}/nightly-a-davis2016"
    assert nightly.list_run_names(f"s3://{bucket}/elsewhere") == []


# --------------------------------------------------------------------------------------------------
# Pseudo-labelling job: the submit command it builds
# --------------------------------------------------------------------------------------------------
def test_pseudo_label_builds_the_submit_command():
    args = pseudo.parse_args(["--input", "s3://bucket/videos/", "--input", "more.parquet", "--output", "s3://bucket/pl",
                              "--gpus", "8", "--flow", "raft-small", "-p", "optimisation.lam=0.5",
                              "--s3-endpoint-url", "http://minio:9000", "--", "--window-frames", "100"])
    cmd = pseudo.build_submit_command(args, "pseudo-1", on_cluster=True)
    assert cmd[:4] == [sys.executable, "-m", "vosbatch.cli", "submit"]
    assert cmd[4:] == ["--input", "s3://bucket/videos/", "--input", "more.parquet", "--output", "s3://bucket/pl",
                       "--run-id", "pseudo-1", "--gpus", "8", "--flow", "raft-small", "--s3-endpoint-url",
                       "http://minio:9000", "-p", "optimisation.lam=0.5", "--address", "auto", "--no-progress",
                       "--window-frames", "100"]
    resumed = pseudo.parse_args(["--input", "m.csv", "--output", "out", "--workers", "3", "--resume", "pseudo-7"])
    assert pseudo.run_id_of(resumed) == "pseudo-7"
    cmd = pseudo.build_submit_command(resumed, pseudo.run_id_of(resumed), on_cluster=False)
    assert cmd[4:] == ["--input", "m.csv", "--output", "out", "--resume", "pseudo-7", "--workers", "3", "--no-progress"]
    from vosbatch.cli import submit

    names = {opt for p in submit.params for opt in p.opts}
    if not {"--input", "--resume", "--s3-endpoint-url"} <= names:
        pytest.skip("vosbatch submit has no --input/--resume/--s3-endpoint-url yet")
    for built in (pseudo.build_submit_command(args, "pseudo-1", True), cmd):
        submit_accepts(built[4:])


def test_pseudo_label_arguments_and_dry_run():
    with pytest.raises(SystemExit):
        pseudo.parse_args(["--input", "a", "--output", "o", "--gpus", "1", "--workers", "2"])
    with pytest.raises(SystemExit):
        pseudo.parse_args(["--input", "a", "--output", "o", "--resume", "r", "--run-id", "s"])
    import datetime as dt

    args = pseudo.parse_args(["--input", "a.mp4", "--output", "o"])
    assert pseudo.run_id_of(args, dt.datetime(2026, 1, 2, 3, 4, 5)) == "pseudo-20260102-030405"
    res = run_job("pseudo_label.py", "--input", "a b.mp4", "--output", "s3://b/p", "--run-id", "r1", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("submit --input 'a b.mp4' --output s3://b/p --run-id r1 --no-progress")


# --------------------------------------------------------------------------------------------------
# DAVIS benchmark scripts: the ablation's saved masks and IKE's refinement mode on them
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ray
def test_davis_benchmark_runs_submit_and_reports_every_stage(tmp_path):
    vid = make_video(frames=6, size=(48, 64), obj_size=(11, 15), obj_velocity=(2.0, 1.0), bg_velocity=(-1.0, 0.0), seed=4)
    root = write_davis_fixture(tmp_path / "DAVIS", {"walker": vid})
    res = run_job("benchmark_davis.py", "--data-root", root, "--output", tmp_path / "b", "--run-id", "r", "--",
                  "--work-height", "48", "--refine", "fgs", "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / "b" / "r" / "benchmark.json").read_text())
    run = RunStore(str(tmp_path / "b" / "r")).read_metrics()[0]
    assert summary["J"] == pytest.approx(run["j_mean"]) and summary["J"] > 0.5 and summary["preset"] == "balanced"
    assert summary["stages"]["init"]["j_mean"] == pytest.approx(run["init_j_mean"], abs=1e-5)
    assert {"flow", "init", "optimise", "binarize"} <= set(summary["seconds_per_frame_by_stage"])
    assert f"J {summary['J']:.4f}" in res.stdout
    again = run_job("benchmark_davis.py", "--summarise", tmp_path / "b" / "r")
    assert again.returncode == 0 and f"J {summary['J']:.4f}" in again.stdout


def _frames(seed, names, with_cut):
    """Frames of a synthetic run: J follows refine_iou and border; globalopt-like runs also carry spectral_cut."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        level = rng.uniform(0.3, 1.0)
        for _ in range(12):
            x = {"stage_iou": rng.uniform(0.5, 1), "temporal_iou": rng.uniform(0.5, 1),
                 "refine_iou": np.clip(level + 0.05 * rng.standard_normal(), 0, 1), "border": rng.uniform(0, 0.1)}
            if with_cut:
                x["spectral_cut"] = rng.uniform(0.3, 0.8)
            out.append({"sequence": name, "j": float(np.clip(x["refine_iou"] - 2 * x["border"], 0, 1)), **x})
    return out


def test_quality_fit_pools_another_run_on_shared_signals_and_leaves_each_video_out_of_both():
    fit = load_job("fit_quality")
    names = [f"v{i}" for i in range(6)]
    own, pool = _frames(0, names, with_cut=False), _frames(1, names, with_cut=True)
    sequences = [{"sequence": n, "j": float(np.mean([f["j"] for f in own if f["sequence"] == n]))} for n in names]
    inputs = fit.model_inputs(own, pool)
    assert "spectral_cut" not in inputs and fit.model_inputs(pool) == fit.FRAME_INPUTS
    pooled = fit.loso(sequences, own, inputs, pool)
    # the held-out video's frames in the pooled run are never seen: poisoning them changes nothing for it
    poisoned = [dict(f, j=1.0 - f["j"]) if f["sequence"] == "v0" else f for f in pool]
    assert fit.loso(sequences, own, inputs, poisoned)["predictions"]["v0"] == pooled["predictions"]["v0"]
    assert fit.loso(sequences, own, inputs, poisoned)["predictions"]["v1"] != pooled["predictions"]["v1"]
    assert pooled["sequence_rho"] > 0.8 and pooled["sequence_mae"] < 0.1
