"""Runs users can trust: names never leave the run's folder, one S3 configuration for every command and URI,
honest run state and complete resume, ground truth with holes, errors as one line."""
import json
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from vosbatch.errors import OutputError
from vosbatch.io.store import RunStore
from vosbatch.names import MAX_NAME, is_safe_name, safe_name, unique_names
from support.cli import cli_env, run_cli
from support.synthetic import make_video, write_davis_fixture

SMALL = ["--work-height", "48", "--refine", "fgs", "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2"]
HOSTILE = ["../../../../escaped", "/abs/escaped", "%2e%2e", "a" * 300]


def _written_outside(top: Path, run: Path):
    """Parquet files under ``top`` that are not under ``run``."""
    return [p for p in top.rglob("*.parquet") if run not in p.parents]


def test_names_are_made_safe_once_and_kept_unique_ignoring_case():
    for raw in HOSTILE + ["a\x00b", ".hidden", "..", "café", unicodedata.normalize("NFD", "café")]:
        name = safe_name(raw)
        assert is_safe_name(name) and "/" not in name and ".." not in name and len(name) <= MAX_NAME, raw
    assert safe_name("bmx-trees") == "bmx-trees"
    assert safe_name("a" * 300) != safe_name("a" * 299 + "b")  # long names keep a digest of the whole
    assert safe_name("café") == safe_name(unicodedata.normalize("NFD", "café"))  # one NFC form
    assert unique_names(["Clip", "clip", "CLIP", "clip-2"]) == ["Clip", "clip-3", "CLIP-4", "clip-2"]


def test_the_store_refuses_a_name_that_would_leave_the_run(tmp_path):
    store = RunStore(str(tmp_path / "out" / "run"))
    for bad in ["../x", "/x", "..", "a/b", "a\x00b", "%2e%2e"]:
        with pytest.raises(OutputError, match="unsafe sequence name"):
            store.write_metrics("davis2016", bad, {"status": "ok"})
    with pytest.raises(OutputError, match="unsafe dataset name"):
        store.write_masks("../d", "x", ["0"], np.zeros((1, 4, 4), bool))
    assert not list(tmp_path.rglob("*.parquet"))


@pytest.mark.ray
def test_hostile_sequence_names_stay_inside_the_run_folder(tmp_path):
    root = write_davis_fixture(tmp_path / "data" / "DAVIS", {"walker": make_video(frames=6, size=(48, 64), seed=1)})
    # what `../../../../escaped` reaches from the dataset's image folder (data/DAVIS/JPEGImages/480p): a real
    # folder of frames, which the reader must not take for a sequence of the dataset
    other = write_davis_fixture(tmp_path / "x", {"escaped": make_video(frames=6, size=(48, 64), seed=2)})
    (other / "JPEGImages/480p/escaped").rename(tmp_path / "escaped")
    assert (root / "JPEGImages" / "480p" / HOSTILE[0]).resolve() == (tmp_path / "escaped").resolve()
    out = tmp_path / "data" / "out"
    res = run_cli("submit", "--data-root", root, "--sequences", ",".join(["walker"] + HOSTILE), "--output", out,
                  "--run-id", "r", "--no-progress", *SMALL)
    rows = {r["sequence"]: r for r in RunStore(str(out / "r")).read_metrics()}
    assert rows["walker"]["status"] == "ok"
    for raw in HOSTILE:
        row = rows[safe_name(raw)]  # refused, or (a literal '%2e%2e' is a folder name) not found
        assert row["status"] == "failed" and ("not a sequence name" in row["error"] or "unknown sequence" in row["error"])
    assert not _written_outside(tmp_path, out / "r"), res.stderr


@pytest.mark.ray
def test_manifest_names_and_s3_keys_stay_inside_the_run(tmp_path, s3_bucket, moto_s3_endpoint):
    """Names from a manifest (NUL, '..', case- and Unicode-only differences) through the CLI to S3 keys."""
    bucket, client = s3_bucket
    clip = make_video(frames=6, size=(48, 64), seed=3)
    folder = write_davis_fixture(tmp_path / "D", {"c": clip}) / "JPEGImages/480p/c"
    names = ["a\x00b", "..", "Clip", "clip", "café", unicodedata.normalize("NFD", "café"), "%2e%2e/x"]
    (tmp_path / "m.csv").write_text("path,name\n" + "".join(f"{folder},{n}\n" for n in names))
    env = {k: v for k, v in cli_env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    run_cli("submit", "--input", tmp_path / "m.csv", "--output", f"s3://{bucket}/runs", "--run-id", "r",
            "--s3-endpoint-url", moto_s3_endpoint, "--no-progress", "--no-compact", *SMALL, env=env)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if not o["Key"].endswith("/")]
    assert keys and all(k.startswith("runs/r/") and ".." not in k and "\x00" not in k for k in keys), keys
    stored = sorted({k.split("sequence=")[1].split("/")[0] for k in keys if "/metrics/" in k})
    assert len(stored) == len(names) and len({s.casefold() for s in stored}) == len(names), stored


@pytest.mark.ray
def test_every_command_reaches_s3_through_one_endpoint_option(tmp_path, s3_bucket, moto_s3_endpoint):
    """Inputs, outputs, --refine-from, export, report, compare and compact all honour --s3-endpoint-url;
    the AWS endpoint variables are unset, so without the option each would go to AWS."""
    bucket, client = s3_bucket
    clip = make_video(frames=8, size=(48, 64), seed=4)
    frames = write_davis_fixture(tmp_path / "D", {"walker": clip}) / "JPEGImages/480p/walker"
    for f in sorted(frames.iterdir()):
        client.upload_file(str(f), bucket, f"inputs/walker/{f.name}")
    env = {k: v for k, v in cli_env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    s3 = ["--s3-endpoint-url", moto_s3_endpoint]
    run_cli("submit", "--input", f"s3://{bucket}/inputs/", "--output", f"s3://{bucket}/runs", "--run-id", "a",
            "--no-progress", *SMALL, *s3, env=env)
    run_cli("submit", "--input", f"s3://{bucket}/inputs/", "--output", f"s3://{bucket}/runs", "--run-id", "b",
            "--method", "ike", "--refine-from", f"s3://{bucket}/runs/a", "-p", "cycles=1", "-p", "graph.stride=2",
            "--work-height", "48", "--refine", "fgs", "--no-progress", *s3, env=env)
    rows = RunStore(f"s3://{bucket}/runs/b", endpoint_override=moto_s3_endpoint.split("//")[1], scheme="http").read_metrics()
    assert [r["status"] for r in rows] == ["ok"], rows
    run_cli("export", f"s3://{bucket}/runs/a", "--png", tmp_path / "png", *s3, env=env)
    assert len(list((tmp_path / "png" / "walker").glob("*.png"))) == 8
    run_cli("report", f"s3://{bucket}/runs/a", "-o", tmp_path / "r.html", "--no-progress", "--data-root", tmp_path / "D",
            *s3, env=env)
    assert (tmp_path / "r.html").is_file()
    cmp = run_cli("compare", f"s3://{bucket}/runs/a", f"s3://{bucket}/runs/b", *s3, env=env)
    assert "IoU(B,A)" in cmp.stdout  # no ground truth: the masks' agreement
    run_cli("compact", f"s3://{bucket}/runs/b", *s3, env=env)


@pytest.mark.ray
def test_unreachable_s3_is_one_line_naming_the_uri_never_a_traceback(tmp_path):
    env = {k: v for k, v in cli_env(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x").items()
           if not k.startswith("AWS_ENDPOINT_URL")}
    down = ["--s3-endpoint-url", "http://127.0.0.1:9"]  # nothing listens there
    for args in (["export", "s3://nobucket/runs/x", "--png", tmp_path / "p"], ["compare", "s3://nobucket/a", "s3://nobucket/b"],
                 ["report", "s3://nobucket/a", "-o", tmp_path / "r.html"], ["compact", "s3://nobucket/a"]):
        proc = run_cli(*args, *down, check=False, env=env, timeout=120)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert err[-1].startswith("Error: s3://nobucket/") and len(err) == 1, proc.stderr


def _run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


@pytest.mark.ray
def test_sigterm_records_interrupted_and_resume_restores_every_option(tmp_path):
    vids = {f"s{i}": make_video(frames=10, size=(48, 64), seed=20 + i) for i in range(4)}
    root = write_davis_fixture(tmp_path / "D", vids)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vosbatch.cli", "submit", "--data-root", str(root), "--output", str(out),
                             "--run-id", "r", "--workers", "2", "--cpus-per-worker", "1", "--retries", "3", "--no-progress",
                             *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "r" / "metrics").glob("*/*/part-0.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    info = _run_json(out / "r")
    assert info["status"] == "interrupted", err
    assert f"vosbatch submit --output {out} --resume r" in err
    assert info["job"]["workers"] == 2 and info["job"]["retries"] == 3
    res = run_cli("submit", "--output", out, "--resume", "r", "--no-progress")  # no --workers: the run's own
    info = _run_json(out / "r")
    assert info["status"] == "done" and info["job"]["workers"] == 2 and info["job"]["cpus_per_worker"] == 1
    assert "resume:" in res.stderr and len(RunStore(str(out / "r")).read_metrics()) == 4


@pytest.mark.ray
def test_an_unreachable_cluster_leaves_nothing_behind(tmp_path):
    root = write_davis_fixture(tmp_path / "D", {"w": make_video(frames=6, size=(48, 64), seed=1)})
    out = tmp_path / "out"
    proc = run_cli("submit", "--data-root", root, "--output", out, "--run-id", "r", "--address", "127.0.0.1:9",
                   "--no-progress", *SMALL, check=False, timeout=200)
    assert proc.returncode == 1 and "cannot reach the Ray cluster at 127.0.0.1:9" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "r").exists()
    run_cli("submit", "--data-root", root, "--output", out, "--run-id", "r", "--no-progress", *SMALL)  # the id is free
    assert _run_json(out / "r")["status"] == "done"


def test_a_driver_error_marks_the_run_failed_with_the_error(tmp_path, monkeypatch):
    from vosbatch.config import RunConfig
    from vosbatch.runner import job

    root = write_davis_fixture(tmp_path / "D", {"w": make_video(frames=6, size=(48, 64), seed=1)})
    monkeypatch.setattr(job, "start_ray", lambda *a, **k: None)

    def broken(*args, **kwargs):
        raise RuntimeError("the scheduler fell over")

    monkeypatch.setattr(job, "run_sequences", broken)
    messages = []
    spec = job.JobSpec(data_root=str(root), output=str(tmp_path / "out"), run_id="r", inputs=None)
    with pytest.raises(RuntimeError):
        job.run_job(spec, RunConfig(), echo=messages.append)
    info = _run_json(tmp_path / "out" / "r")
    assert info["status"] == "failed" and "the scheduler fell over" in info["error"]
    assert any("--resume r" in m for m in messages)


@pytest.mark.ray
def test_ground_truth_with_holes_is_explicit(tmp_path):
    """DAVIS annotates every frame: a missing mask fails the sequence, naming the file. A generic GT folder
    may annotate some frames only: the row is ok, says which frames were not scored, and counts those that were."""
    vid = make_video(frames=8, size=(48, 64), seed=5)
    root = write_davis_fixture(tmp_path / "D", {"w": vid})
    (root / "Annotations/480p/w/00004.png").unlink()
    out = tmp_path / "out"
    run_cli("submit", "--data-root", root, "--output", out, "--run-id", "davis", "--no-progress", *SMALL)
    row = RunStore(str(out / "davis")).read_metrics()[0]
    assert row["status"] == "failed" and "00004.png" in row["error"]
    (tmp_path / "m.csv").write_text(f"path,gt\n{root}/JPEGImages/480p/w,{root}/Annotations/480p/w\n")
    run_cli("submit", "--input", tmp_path / "m.csv", "--output", out, "--run-id", "generic", "--no-progress", *SMALL)
    row = RunStore(str(out / "generic")).read_metrics()[0]
    assert row["status"] == "ok" and row["gt_frames"] == 5  # 8 frames, first and last unscored, 00004 missing
    assert "no mask for 1 of 8 frames (00004" in row["warning"]


def _fake_run(store: RunStore, masks: dict, status=None) -> None:
    store.write_run_info({"run_id": store.uri.rsplit("/", 1)[-1], "config": {}, "status": "done"})
    for name, m in masks.items():
        store.write_masks("inputs", name, [f"{t:05d}" for t in range(len(m))], m)
        store.write_metrics("inputs", name, {"method": "globalopt", "frames": len(m), "seconds": 1.0,
                                             "status": (status or {}).get(name, "ok")})


def test_compare_without_ground_truth_uses_agreement_and_failures(tmp_path):
    from click.testing import CliRunner

    from vosbatch.cli import main

    m = np.zeros((4, 16, 16), bool)
    m[:, 4:12, 4:12] = True
    shifted = np.roll(m, 4, axis=2)
    _fake_run(RunStore(str(tmp_path / "a")), {"x": m, "y": m})
    _fake_run(RunStore(str(tmp_path / "b")), {"x": m, "y": shifted})
    _fake_run(RunStore(str(tmp_path / "c")), {"x": m, "y": m}, status={"y": "failed"})
    cli = CliRunner()
    same = cli.invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-on-regression"])
    assert same.exit_code == 0 and "no sequence scored in both" not in same.output, same.output
    assert "IoU(B,A)" in same.output and "1.000" in same.output and "0.333" in same.output
    strict = cli.invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--min-agreement", "0.5",
                               "--fail-on-regression"])
    assert strict.exit_code == 1 and "agree with A below 0.50" in strict.output and "y (0.333)" in strict.output
    failed = cli.invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "c"), "--fail-on-regression"])
    assert failed.exit_code == 1 and "newly failed: inputs/y" in failed.output


def test_progress_counts_frames_within_a_sequence_and_prints_status_lines_without_a_terminal():
    import io

    from vosbatch.progress import listening, report, span
    from vosbatch.runner.progress import ProgressDisplay, SequenceProgress

    sent = []
    tracker = SequenceProgress(sent.append, min_interval_s=0.0)
    tracker.start_window(50)
    with listening(tracker):
        report("flow", 1.0)  # a quarter of the window's work
        with span(0.0, 0.5):
            report("method", 1.0)  # half of the method: a quarter more
    assert sent[-1] == pytest.approx(50 * (0.25 + 0.25))
    tracker.start_window(30)
    assert tracker.frames_done() == 50  # the first window counts whole once the next starts
    out = io.StringIO()
    display = ProgressDisplay(100, bar=True, interval_s=0.0, stream=out)  # not a terminal: lines, not a bar
    display.in_flight({"d/a": 40.0})
    display.sequence_done("d/a", 60, "ok")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("progress: 40/100 frames (40.0 %)") and "frames/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("progress: 60/100 frames") and "1 ok" in lines[-1]


@pytest.mark.ray
def test_the_driver_sees_a_long_video_advance_before_it_finishes(tmp_path):
    """Actors report through a Ray progress actor: the driver's frames-done moves within one sequence."""
    from vosbatch.data import input_sequences
    from vosbatch.presets import preset_config
    from vosbatch.runner.driver import run_sequences

    vid = make_video(frames=40, size=(48, 64), seed=9)
    folder = write_davis_fixture(tmp_path / "D", {"long": vid}) / "JPEGImages/480p/long"
    cfg = preset_config(overrides={"work_height": 48, "refine": "fgs", "window_frames": 10, "window_overlap": 2,
                                   "method_params": {"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}}})
    seen, rows = [], []
    run_sequences(input_sequences([str(folder)]), cfg, str(tmp_path / "run"), workers=1,
                  on_progress=lambda partial: seen.extend(partial.values()), on_result=rows.append)
    assert rows and rows[0]["status"] == "ok"
    assert any(0 < v < 40 for v in seen), seen  # seen part-way, and more than once
    assert len({round(v) for v in seen if 0 < v < 40}) >= 2, seen


@pytest.mark.ray
def test_retries_are_counted_over_resumes(tmp_path):
    """A sequence that already cost retries keeps them when a resumed run does it again."""
    root = write_davis_fixture(tmp_path / "D", {"a": make_video(frames=6, size=(48, 64), seed=1),
                                                "b": make_video(frames=6, size=(48, 64), seed=2)})
    out = tmp_path / "out"
    run_cli("submit", "--data-root", root, "--output", out, "--run-id", "r", "--no-progress", "--no-compact", *SMALL)
    store = RunStore(str(out / "r"))
    store.write_metrics("davis2016", "b", {"status": "failed", "error": "worker died (gave up after 2 retries)",
                                           "retries": 3, "config_hash": "x"})  # as a run that gave up leaves it
    run_cli("submit", "--output", out, "--resume", "r", "--no-progress")
    rows = {r["sequence"]: r for r in store.read_metrics()}
    assert rows["b"]["status"] == "ok" and rows["b"]["retries"] == 3 and rows["a"]["retries"] == 0
    assert _run_json(out / "r")["retries"] == 3
