"""The batch runner under faults: windows over long videos, dead workers, a killed driver and resume,
S3 outputs through PUT failures. Everything runs for real (local Ray, a moto S3 server on 127.0.0.1)."""
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from vosbatch.config import RunConfig
from vosbatch.data import davis_sequences
from vosbatch.io.png import decode_mask
from vosbatch.io.store import RunStore
from vosbatch.pipeline import VideoSegmenter
from vosbatch.runner.windows import plan_windows
from vosbatch.runner.worker import segment_sequence
from support.cli import cli_env, run_cli
from support.synthetic import make_video, write_davis_fixture

SMALL = ["--work-height", "64", "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2"]
SMALL_CFG = dict(work_height=64, method_params={"spectral": {"grid_stride": 4}, "optimisation": {"stride": 2}})


# -- windows ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,size,overlap", [(10, 100, 16), (116, 100, 16), (117, 100, 16), (300, 100, 16),
                                            (2000, 100, 16), (37, 10, 3), (11, 10, 0)])
def test_windows_cover_every_frame_once_and_bound_the_window(n, size, overlap):
    wins = plan_windows(n, size, overlap)
    kept = np.concatenate([np.arange(w.keep_start, w.keep_stop) for w in wins])
    assert np.array_equal(kept, np.arange(n))  # every frame kept exactly once, in order
    for w in wins:
        assert w.start <= w.keep_start < w.keep_stop <= w.stop
        assert w.stop - w.start == (n if n <= size + overlap else size)  # bounded by the window size
    for a, b in zip(wins, wins[1:]):
        assert a.stop - b.start >= overlap  # consecutive windows share at least `overlap` frames


def test_windows_reject_an_overlap_as_long_as_the_window():
    with pytest.raises(ValueError):
        plan_windows(100, 10, 10)


class RecordingSequence:
    """A sequence that records which frame ranges the worker asked for (and how many at once)."""

    def __init__(self, seq):
        self.seq, self.requests = seq, []

    def __getattr__(self, name):
        return getattr(self.seq, name)

    def load_frames(self, start=0, stop=None):
        self.requests.append((start, stop))
        return self.seq.load_frames(start, stop)


def test_a_long_video_is_segmented_in_bounded_windows_and_stitched(tmp_path):
    vid = make_video(frames=40, size=(64, 96), obj_velocity=(1.5, 0.5), bg_velocity=(-0.5, 0.0), seed=4)
    root = write_davis_fixture(tmp_path / "D", {"long": vid})
    seq = RecordingSequence(davis_sequences(root, sequences=["long"])[0])
    cfg = RunConfig(window_frames=16, window_overlap=4, **SMALL_CFG)
    out = segment_sequence(VideoSegmenter(cfg), seq, {})
    assert out["windows"] == 3 and max((b or 40) - a for a, b in seq.requests) == 16
    masks = np.stack([decode_mask(p) for p in out["pngs"]])
    assert masks.shape == (40, 64, 96)
    iou = (masks & vid.masks).sum((1, 2)) / np.maximum((masks | vid.masks).sum((1, 2)), 1)
    assert iou.mean() > 0.7 and iou.min() > 0.3  # the object is found in every window
    assert len(out["overlap_ious"]) == 2 and min(out["overlap_ious"]) > 0.5  # the windows agree where they meet
    whole = segment_sequence(VideoSegmenter(RunConfig(**SMALL_CFG)), davis_sequences(root, sequences=["long"])[0], {})
    assert whole["windows"] == 1
    # the stitched score is within reach of segmenting the 40 frames at once
    assert out["scores"]["final"].j_mean > whole["scores"]["final"].j_mean - 0.1


# -- Ray: faults and resume ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    vids = {f"seq{i}": make_video(frames=14 + 2 * i, size=(64, 96), obj_velocity=(2.0, 0.5 * i), bg_velocity=(-0.5, 0.2),
                                  seed=10 + i) for i in range(3)}
    return write_davis_fixture(tmp / "DAVIS", vids), tmp


def _tables(run: Path):
    store = RunStore(str(run))
    masks = store.read_masks().to_pylist()
    metrics = {r["sequence"]: r for r in store.read_metrics()}
    return masks, metrics


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _actor_pids(name: str, ancestor: int):
    """Processes titled ``name...`` descending from ``ancestor`` (this run's driver started the local
    Ray whose raylet forks the actors; other Ray jobs on the machine are not ours to kill)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="ignore")
        except OSError:
            continue
        if title.startswith(name):
            pid = int(d.name)
            chain = pid
            while chain > 1 and chain != ancestor:
                chain = _parent(chain)
            if chain == ancestor:
                pids.append(pid)
    return pids


@pytest.fixture(scope="module")
def clean_run(dataset):
    root, tmp = dataset
    run_cli("submit", "--data-root", root, "--output", tmp / "runs", "--run-id", "clean", "--no-progress", *SMALL)
    return tmp / "runs" / "clean"


@pytest.mark.ray
def test_killing_a_worker_mid_sequence_still_completes_with_identical_outputs(dataset, clean_run):
    root, tmp = dataset
    proc = subprocess.Popen([sys.executable, "-m", "vosbatch.cli", "submit", "--data-root", str(root), "--output",
                             str(tmp / "runs"), "--run-id", "faulted", "--no-progress", *SMALL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    killed = None
    deadline = time.time() + 120
    busy_since = {}
    while killed is None and time.time() < deadline and proc.poll() is None:
        busy = _actor_pids("ray::_Actor.process", proc.pid)  # the title Ray gives an actor while it runs a task
        busy_since = {pid: busy_since.get(pid, time.time()) for pid in busy}
        for pid, since in busy_since.items():
            if time.time() - since > 0.3:  # busy for a while: well inside a sequence
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, f"never saw a busy actor to kill\n{err}"
    assert proc.returncode == 0, err
    assert "RETRY" in err and "1 retried" in out, (out, err)
    masks, metrics = _tables(tmp / "runs" / "faulted")
    clean_masks, clean_metrics = _tables(clean_run)
    assert all(r["status"] == "ok" for r in metrics.values()) and len(metrics) == 3
    # the retry is on the sequence's row and in the run's event log (not in run.json, which must not grow)
    events = RunStore(str(tmp / "runs" / "faulted")).read_events().to_pylist()
    assert sum(r["retries"] for r in metrics.values()) == 1 and len(events) == 1
    assert events[0]["event"] == "retry" and metrics[events[0]["sequence"]]["retries"] == 1 and "died" in events[0]["reason"]
    assert [(m["sequence"], m["frame"], m["mask_png"]) for m in masks] == \
           [(m["sequence"], m["frame"], m["mask_png"]) for m in clean_masks]
    for name, row in metrics.items():
        assert row["j_mean"] == clean_metrics[name]["j_mean"] and row["f_mean"] == clean_metrics[name]["f_mean"]


@pytest.mark.ray
def test_a_killed_driver_is_finished_by_resume_without_recomputing(dataset, clean_run):
    root, tmp = dataset
    runs = tmp / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "vosbatch.cli", "submit", "--data-root", str(root), "--output",
                             str(runs), "--run-id", "killed", "--no-progress", "--no-compact", *SMALL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(), start_new_session=True)
    metrics_dir = runs / "killed" / "metrics"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(metrics_dir.glob("*/*/part-0.parquet"))) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started die together
    proc.wait()
    # an actor caught mid-sequence may still finish and store it before it notices: wait until the
    # run's files stop changing, then take stock of what a resume should find done
    seen, stable_since = None, time.time()
    while time.time() - stable_since < 3 and time.time() < deadline + 60:
        now = sorted((str(p), p.stat().st_mtime_ns) for p in (runs / "killed").glob("*/*/*/part-0.parquet"))
        if now != seen:
            seen, stable_since = now, time.time()
        time.sleep(0.2)
    finished = {p: p.stat().st_mtime_ns for p in (runs / "killed").glob("*/*/*/part-0.parquet")}
    finished_seqs = {p.parent.name for p in finished if p.parts[-4] == "metrics"}
    assert 1 <= len(finished_seqs) < 3, "the driver should have died part-way"
    assert json.loads((runs / "killed" / "run.json").read_text())["status"] == "running"
    res = run_cli("submit", "--output", runs, "--resume", "killed", "--no-progress")  # --no-compact: from run.json
    assert f"resume: {len(finished_seqs)} of 3 sequences already done" in res.stderr
    for p, mtime in finished.items():  # finished sequences were not recomputed or rewritten
        assert p.stat().st_mtime_ns == mtime
    masks, metrics = _tables(runs / "killed")
    clean_masks, _ = _tables(clean_run)
    assert len(metrics) == 3 and all(r["status"] == "ok" for r in metrics.values())
    assert [m["mask_png"] for m in masks] == [m["mask_png"] for m in clean_masks]
    info = json.loads((runs / "killed" / "run.json").read_text())
    assert info["status"] == "done" and info["resumed"][0]["skipped"] == len(finished_seqs)


@pytest.mark.ray
def test_resume_retries_failed_sequences_and_refuses_unknown_runs(dataset, tmp_path):
    root, tmp = dataset
    fixture = write_davis_fixture(tmp_path / "D", {"good": make_video(frames=8, size=(64, 96), seed=1),
                                                   "bad": make_video(frames=8, size=(64, 96), seed=2)})
    frame = fixture / "JPEGImages/480p/bad/00002.jpg"
    original = frame.read_bytes()
    frame.write_bytes(b"not a jpeg")
    runs = tmp_path / "runs"
    first = run_cli("submit", "--data-root", fixture, "--output", runs, "--run-id", "r", "--no-progress", *SMALL)
    assert "FAILED bad" in first.stderr and "00002.jpg" in first.stderr
    frame.write_bytes(original)  # the input is repaired
    again = run_cli("submit", "--output", runs, "--resume", "r", "--no-progress")
    assert "resume: 1 of 2 sequences already done" in again.stderr and "1 ok, 0 failed" in again.stdout
    _, metrics = _tables(runs / "r")
    assert metrics["bad"]["status"] == "ok" and metrics["good"]["status"] == "ok"
    # a changed configuration is a different hash: everything reruns
    changed = run_cli("submit", "--output", runs, "--resume", "r", "--no-progress", "-p", "spectral.grid_stride=8")
    assert "resume: 0 of 2 sequences already done" in changed.stderr
    missing = run_cli("submit", "--output", runs, "--resume", "nope", "--no-progress", check=False)
    assert missing.returncode != 0 and "nope" in missing.stderr and "run.json" in missing.stderr
    exists = run_cli("submit", "--data-root", fixture, "--output", runs, "--run-id", "r", "--no-progress", check=False)
    assert exists.returncode != 0 and "--resume" in exists.stderr


# -- S3 outputs through a flaky network -------------------------------------------------------------
class FlakyS3Proxy(http.server.ThreadingHTTPServer):
    """An HTTP proxy in front of the S3 server that breaks PUTs of keys containing ``match``: it reads
    the body and drops the connection (that part upload never completes), ``fail_puts`` times per
    object, or every time when the key also contains ``always``."""

    def __init__(self, upstream, match="masks/", fail_puts=2, always=None):
        self.upstream, self.match, self.fail_puts, self.always = upstream, match, fail_puts, always
        self.failures, self.lock = {}, threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _forward(self):
                srv = self.server
                body = self._read_body()
                length = len(body or b"")
                path = urllib.parse.unquote(self.path.split("?")[0])
                if self.command == "PUT" and length and srv.match in path:
                    with srv.lock:
                        n = srv.failures.get(path, 0)
                        fail = (srv.always and srv.always in path) or n < srv.fail_puts
                        fail = fail and srv.match in path
                        if fail:
                            srv.failures[path] = n + 1
                    if fail:  # the body was sent but the upload never completes: the connection drops
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                conn = http.client.HTTPConnection(*srv.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def _read_body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.ray
def test_s3_output_survives_failed_puts_and_never_holds_a_partial_object(dataset, clean_run, s3_bucket,
                                                                         moto_s3_endpoint, monkeypatch):
    import pyarrow.parquet as pq

    root, tmp = dataset
    bucket, s3 = s3_bucket
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the run reaches S3 only through the proxy given below
    upstream = urllib.parse.urlsplit(moto_s3_endpoint)
    proxy = FlakyS3Proxy((upstream.hostname, upstream.port), match="masks/", fail_puts=2, always="sequence=seq1/")
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        creds = dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="Zq8SecretValue", AWS_DEFAULT_REGION="us-east-1")
        proxy_url = "http://127.0.0.1:%d" % proxy.server_address[1]
        res = run_cli("submit", "--data-root", root, "--output", f"s3://{bucket}/runs", "--run-id", "s3run",
                      "--no-progress", "--no-compact", "--s3-endpoint-url", proxy_url, *SMALL, env=cli_env(**creds),
                      check=False)
        assert proxy.failures, "the proxy should have broken some uploads"
        assert "Zq8SecretValue" not in res.stdout + res.stderr  # credentials are never logged
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/s3run/")["Contents"])
        # seq1's masks could never be uploaded: it is a failed row and no masks object exists for it
        assert not [k for k in keys if "masks/" in k and "seq1" in k], (proxy.failures, res.stderr[-3000:])
        _, clean = _tables(clean_run)
        clean_masks, _ = _tables(clean_run)
        for key in keys:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if key.endswith(".parquet"):
                table = pq.read_table(pa_buffer(body))  # whole objects only: every one parses
                if "masks/" in key:
                    name = key.split("sequence=")[1].split("/")[0]
                    expected = [m["mask_png"] for m in clean_masks if m["sequence"] == name]
                    assert table.column("mask_png").to_pylist() == expected
        metrics_keys = [k for k in keys if "metrics/" in k]
        assert len(metrics_keys) == 3
        rows = {k.split("sequence=")[1].split("/")[0]: pq.read_table(pa_buffer(s3.get_object(Bucket=bucket, Key=k)["Body"].read())).to_pylist()[0]
                for k in metrics_keys}
        assert rows["seq0"]["status"] == "ok" and rows["seq2"]["status"] == "ok"
        assert rows["seq1"]["status"] == "failed" and "masks" in rows["seq1"]["error"] and "attempts" in rows["seq1"]["error"]
        assert res.returncode == 0 and "FAILED seq1" in res.stderr
    finally:
        proxy.shutdown()


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)


def test_inside_a_ray_job_submit_leaves_the_jobs_own_runtime_env_settings_alone(monkeypatch):
    """A `ray job submit --runtime-env ...` driver: Ray refuses to merge a ray.init runtime env that
    repeats a field or variable of the job's, so submit's default drops what the job already sets."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from vosbatch.runner.driver import default_runtime_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    plain = default_runtime_env("auto")
    assert plain["py_modules"] and plain["env_vars"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert default_runtime_env(None) is None  # a local cluster inherits the driver's environment
    job = {"working_dir": ".", "env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    assert _merge_runtime_env(job, plain) is None  # the conflict this avoids
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job}))
    inside = default_runtime_env("auto")
    assert "py_modules" not in inside and "OMP_WAIT_POLICY" not in inside["env_vars"]
    merged = _merge_runtime_env(job, inside)
    assert merged is not None and merged["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"


@pytest.mark.ray
def test_submit_inputs_in_windows_and_fbms_scored_on_its_annotated_frames(tmp_path):
    """`--input` (a video file and a frame folder) through windows, and `--dataset fbms59` whose GT
    exists on every 20th frame only: both through the real command."""
    from support.synthetic import write_fbms59_fixture, write_video_file

    vid = make_video(frames=30, size=(64, 96), obj_velocity=(1.0, 0.3), bg_velocity=(-0.5, 0.0), seed=7)
    write_video_file(tmp_path / "clip.mp4", vid.frames, fps=10)
    frames = write_davis_fixture(tmp_path / "D", {"folder": make_video(frames=9, size=(64, 96), seed=8)})
    runs = tmp_path / "runs"
    run_cli("submit", "--input", tmp_path / "clip.mp4", "--input", frames / "JPEGImages/480p/folder", "--output", runs,
            "--run-id", "inputs", "--no-progress", "--window-frames", 12, "--window-overlap", 4, *SMALL)
    masks, metrics = _tables(runs / "inputs")
    assert set(metrics) == {"clip", "folder"} and all(r["status"] == "ok" for r in metrics.values())
    assert metrics["clip"]["windows"] == len(plan_windows(30, 12, 4)) > 1 and metrics["folder"]["windows"] == 1
    assert metrics["clip"]["window_overlap_iou"] > 0.5 and metrics["clip"]["j_mean"] is None  # no GT: no scores
    clip = np.stack([decode_mask(m["mask_png"]) for m in masks if m["sequence"] == "clip"])
    iou = (clip & vid.masks).sum() / (clip | vid.masks).sum()
    assert clip.shape == (30, 64, 96) and iou > 0.6
    fbms = write_fbms59_fixture(tmp_path / "FBMS", {"cars": make_video(frames=45, size=(64, 96), obj_velocity=(1.0, 0.2),
                                                                       seed=9)}, every=20)
    res = run_cli("submit", "--dataset", "fbms59", "--data-root", fbms, "--output", runs, "--run-id", "fbms",
                  "--no-progress", *SMALL)
    _, rows = _tables(runs / "fbms")
    assert rows["cars"]["status"] == "ok" and rows["cars"]["frames"] == 45
    assert rows["cars"]["j_mean"] > 0.5 and "cars" in res.stdout
