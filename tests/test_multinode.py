"""A real two-node Ray cluster on this machine, with token authentication as cluster/ configures it.

A head (`ray start --head`, with the dashboard / job server) and a second node (`ray start --address`)
run as separate process trees, 1 CPU each, every process with RAY_AUTH_MODE=token and a token file of
this test's own (RAY_AUTH_TOKEN_PATH; ~/.ray is not touched). On it:

* ``vosbatch submit --address HEAD --workers 2 --cpus-per-worker 1``: its two actors must run one on
  each node (Ray's state API says where), and its masks must equal those of a local run;
* ``ray job submit --runtime-env cluster/runtime-env.yaml -- python jobs/pseudo_label.py ...``, as
  cluster/README.md documents it: the job must succeed and its run hold ``ok`` rows and their masks.

The cluster is torn down (every process of both nodes' sessions killed by id) even when a test fails.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from vosbatch.io.png import decode_mask
from vosbatch.io.store import RunStore
from support.cli import cli_env, run_cli
from support.synthetic import make_video, write_davis_fixture

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHEAP = ["--work-height", "96", "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2", "--refine", "fgs"]

# Ray's state API and job SDK, run as a client of the cluster (in a subprocess, so that this process's
# own Ray state and auth mode stay out of it). argv: dashboard URL, then nodes | actors | job ID.
STATE = r"""
import json, sys, time
from ray.util.state import list_actors, list_nodes
url, what = sys.argv[1], sys.argv[2]
if what == "nodes":  # wait for both nodes
    deadline = time.time() + float(sys.argv[3])
    while True:
        nodes = [n for n in list_nodes(address=url, limit=100) if n.state == "ALIVE"]
        if len(nodes) >= 2 or time.time() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps([{"node_id": n.node_id, "is_head_node": n.is_head_node} for n in nodes]))
elif what == "actors":
    actors = list_actors(address=url, filters=[("class_name", "=", "_Actor")], limit=10000)
    print(json.dumps([{"actor_id": a.actor_id, "node_id": a.node_id, "state": a.state} for a in actors]))
else:
    from ray.job_submission import JobSubmissionClient
    print(json.dumps(JobSubmissionClient(url).get_job_status(what).value))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(leader: int) -> list:
    """Every live process of the session that ``leader`` started (start_new_session): the node's Ray
    processes and its workers, which Ray puts in process groups of their own but not new sessions."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != leader:
            try:
                if os.getsid(int(entry)) == leader:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        token = tmp / "auth_token"
        self.token = secrets.token_hex(32)
        token.write_text(self.token)
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))}
        # Every node, driver and client: token mode and this token. PATH: a job's `python` is this venv's.
        self.env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
                        OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: dict = {}

    def start_node(self, name: str, *args: str) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.nodes[name] = (subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
             f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={self.tmp / name[0]}", "--disable-usage-stats",
             *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log)

    def check_alive(self) -> None:
        for name, (proc, _) in self.nodes.items():
            if proc.poll() is not None:
                raise AssertionError(f"ray start ({name}) exited {proc.returncode}:\n"
                                     + (self.tmp / f"{name}.log").read_text()[-4000:])

    def wait_for_head(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while True:
            self.check_alive()
            try:  # a health check Ray serves without a token
                with urllib.request.urlopen(f"{self.dashboard}/api/gcs_healthz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline:
                raise AssertionError("the head's dashboard did not come up:\n" + (self.tmp / "head.log").read_text()[-4000:])
            time.sleep(0.5)

    def state(self, *args: str, timeout: float = 120):
        proc = subprocess.run([sys.executable, "-c", STATE, self.dashboard, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        for proc, log in self.nodes.values():
            for pid in [proc.pid, *_session_pids(proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait(timeout=30)
            log.close()


@pytest.fixture(scope="module")
def cluster():
    # A short folder: Ray's AF_UNIX sockets live under it, and their paths may not exceed 107 bytes.
    c = Cluster(Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp")))
    try:
        c.start_node("head", "--head", f"--port={c.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={c.dashboard_port}", f"--ray-client-server-port={_free_port()}")
        c.wait_for_head()
        c.start_node("worker", f"--address={c.address}")
        nodes = c.state("nodes", "90")
        c.check_alive()
        assert len(nodes) == 2, (nodes, (c.tmp / "worker.log").read_text()[-4000:])
        c.node_ids = {n["node_id"] for n in nodes}
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two short synthetic videos as frame folders (the DAVIS fixture's JPEGImages/480p/<name>/)."""
    root = write_davis_fixture(tmp_path_factory.mktemp("videos") / "DAVIS", {
        "walker": make_video(frames=6, size=(96, 128), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=1),
        "runner": make_video(frames=5, size=(96, 128), obj_velocity=(-2.5, 0.5), bg_velocity=(1.0, 0.0),
                             start=(50, 90), seed=2),
    })
    return root / "JPEGImages" / "480p"


def masks_of(run: Path) -> dict:
    table = RunStore(str(run)).read_masks().select(["sequence", "frame", "mask_png"])
    return {(r["sequence"], r["frame"]): decode_mask(r["mask_png"]) for r in table.to_pylist()}


def ok_rows(run: Path) -> list:
    return sorted(r["sequence"] for r in RunStore(str(run)).read_metrics(["sequence", "status"]) if r["status"] == "ok")


def _http_status(url: str, token: str = "") -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_cluster_enforces_its_token(cluster):
    """Both nodes joined with token authentication on: the job server refuses a client without the token."""
    url = f"{cluster.dashboard}/api/jobs/"
    assert _http_status(url) == 401 and _http_status(url, "not-the-token") == 403
    assert _http_status(url, cluster.token) == 200


def test_submit_runs_actors_on_both_nodes_and_matches_a_local_run(cluster, videos, tmp_path):
    before = {a["actor_id"] for a in cluster.state("actors")}
    args = ["submit", "--input", videos, "--output", tmp_path, "--workers", 2, "--cpus-per-worker", 1, "--no-progress",
            *CHEAP]
    run_cli(*args, "--run-id", "cluster", "--address", cluster.address, env=cluster.env)
    actors = [a for a in cluster.state("actors") if a["actor_id"] not in before]
    assert len(actors) == 2 and {a["node_id"] for a in actors} == cluster.node_ids, (actors, cluster.node_ids)

    local_env = {k: v for k, v in cli_env().items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    local_run = run_cli(*args, "--run-id", "local", env=local_env)
    # a local Ray stays on 127.0.0.1 without asking the kernel for a route to 8.8.8.8 (driver.start_ray)
    assert "external connectivity" not in local_run.stderr, local_run.stderr[-3000:]
    assert ok_rows(tmp_path / "cluster") == ok_rows(tmp_path / "local") == ["runner", "walker"]
    on_cluster, local = masks_of(tmp_path / "cluster"), masks_of(tmp_path / "local")
    assert sorted(on_cluster) == sorted(local) and len(local) == 6 + 5
    assert all(m.shape == (96, 128) for m in local.values()) and any(m.any() for m in local.values())
    for key, mask in local.items():
        assert np.array_equal(on_cluster[key], mask), key


def test_ray_job_submit_runs_the_pseudo_label_job(cluster, videos, tmp_path):
    job_id = f"vosbatch-test-{secrets.token_hex(4)}"
    out = tmp_path / "pseudo"
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id,
         "--runtime-env", "cluster/runtime-env.yaml", "--",
         "python", "jobs/pseudo_label.py", "--input", str(videos), "--output", str(out), "--run-id", "job1",
         "--workers", "1", "--", *CHEAP, "--cpus-per-worker", "1"],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert cluster.state(job_id) == "SUCCEEDED"
    run = out / "job1"
    assert ok_rows(run) == ["runner", "walker"]
    masks = masks_of(run)
    assert sorted({seq for seq, _ in masks}) == ["runner", "walker"] and len(masks) == 6 + 5
    assert all(m.shape == (96, 128) for m in masks.values())
