"""The user's path end to end: submit on local Ray, then export and eval, on a synthetic DAVIS root."""
import json
import os

import numpy as np
import pytest

from vosbatch.io.png import decode_mask
from vosbatch.io.store import RunStore
from support.cli import run_cli
from support.synthetic import make_video, write_davis_fixture

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    vids = {
        "walker": make_video(frames=8, size=(96, 128), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5), seed=1),
        "runner": make_video(frames=7, size=(96, 128), obj_velocity=(-2.5, 0.5), bg_velocity=(1.0, 0.0),
                             start=(50, 90), seed=2),
        "broken": make_video(frames=6, size=(96, 128), seed=3),
    }
    root = write_davis_fixture(tmp / "DAVIS", vids)
    (root / "JPEGImages/480p/broken/00003.jpg").write_bytes(b"\x00garbage")
    out = tmp / "runs"
    proc = run_cli("submit", "--data-root", root, "--output", out, "--run-id", "r1", "--no-progress",
                   "--work-height", 96, "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2")
    return {"root": root, "run": out / "r1", "stdout": proc.stdout, "stderr": proc.stderr, "vids": vids, "tmp": tmp}


def test_submit_writes_masks_metrics_and_run_info(run):
    r = run["run"]
    info = json.loads((r / "run.json").read_text())
    assert info["status"] == "done" and info["config"]["method"] == "globalopt"
    assert info["sequences_ok"] == 2 and info["sequences_failed"] == 1
    assert "host" in info and "code" in info and info["finished"] >= info["started"]
    assert not (r / "masks").exists() and (r / "compacted" / "CURRENT").is_file()  # compacted at the end
    masks = RunStore(str(r)).read_masks()
    assert sorted(set(masks.column("sequence").to_pylist())) == ["runner", "walker"]
    walker = RunStore(str(r)).read_masks(sequence="walker").to_pylist()
    assert [m["frame"] for m in walker] == list(range(8))
    gt = run["vids"]["walker"].masks
    ious = []
    for row in walker:
        m = decode_mask(row["mask_png"])
        assert m.shape == (96, 128) and (row["height"], row["width"]) == (96, 128)
        ious.append((m & gt[row["frame"]]).sum() / (m | gt[row["frame"]]).sum())
    assert np.mean(ious) > 0.7  # the moving object was really found


def test_bad_sequence_becomes_a_failed_row_and_others_finish(run):
    rows = {r["sequence"]: r for r in RunStore(str(run["run"])).read_metrics()}
    assert rows["broken"]["status"] == "failed"
    assert "00003.jpg" in rows["broken"]["error"] and "cannot decode" in rows["broken"]["error"]
    for name in ("walker", "runner"):
        assert rows[name]["status"] == "ok"
        for k in ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay"):
            assert rows[name][k] is not None and -1.0 <= rows[name][k] <= 1.0
        assert 0 <= rows[name]["j_mean"] <= 1 and rows[name]["j_mean"] > 0.6
        assert rows[name]["seconds"] > 0
    assert "J&F" in run["stdout"] and "run: " in run["stdout"] and "FAILED broken" in run["stderr"]


def test_export_then_eval_reproduces_the_run_metrics(run):
    png = run["tmp"] / "png"
    run_cli("export", run["run"], "--png", png)
    assert sorted(p.name for p in png.iterdir()) == ["runner", "walker"]
    assert len(list((png / "walker").glob("*.png"))) == 8
    out = run["tmp"] / "scores.csv"
    proc = run_cli("eval", "--pred", png, "--gt", run["root"], "--out", out)
    import pyarrow.csv as pacsv

    scores = {r["sequence"]: r for r in pacsv.read_csv(out).to_pylist()}
    metrics = {r["sequence"]: r for r in RunStore(str(run["run"])).read_metrics()}
    for name in ("walker", "runner"):
        assert abs(scores[name]["j_mean"] - metrics[name]["j_mean"]) < 1e-9
        assert abs(scores[name]["f_mean"] - metrics[name]["f_mean"]) < 1e-9
    assert "J&F" in proc.stdout


def test_unknown_sequence_and_unwritable_output(run, tmp_path):
    proc = run_cli("submit", "--data-root", run["root"], "--sequences", "walker,ghost", "--output", tmp_path,
                   "--run-id", "r2", "--no-progress", "--work-height", 96, "-p", "spectral.grid_stride=4")
    assert "FAILED ghost" in proc.stderr and "unknown sequence 'ghost'" in proc.stderr
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    bad = run_cli("submit", "--data-root", run["root"], "--output", blocker / "x", "--no-progress", check=False)
    assert bad.returncode != 0 and "not writable" in bad.stderr and str(blocker) in bad.stderr


def test_submit_without_data_downloads_the_dataset_first(tmp_path):
    """No --data-root and no $VOSBATCH_DATA_ROOT: the official archive is fetched (here from a local
    HTTP server standing in for the DAVIS site), extracted into the cache and segmented."""
    import functools
    import http.server
    import threading
    import zipfile

    src = write_davis_fixture(tmp_path / "src" / "DAVIS", {"mover": make_video(frames=5, size=(96, 128), seed=7)})
    archive = tmp_path / "www" / "DAVIS-data.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        env_extra = {"VOSBATCH_DAVIS2016_URL": f"http://127.0.0.1:{httpd.server_address[1]}/DAVIS-data.zip",
                     "VOSBATCH_CACHE": str(tmp_path / "cache")}
        old = {k: os.environ.get(k) for k in [*env_extra, "VOSBATCH_DATA_ROOT"]}
        os.environ.update(env_extra)
        os.environ.pop("VOSBATCH_DATA_ROOT", None)
        try:
            proc = run_cli("submit", "--dataset", "davis2016", "--output", tmp_path / "runs", "--run-id", "dl",
                           "--no-progress", "--work-height", 96, "-p", "spectral.grid_stride=4")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        httpd.shutdown()
    root = tmp_path / "cache" / "datasets" / "davis2016"
    assert (root / "JPEGImages" / "480p" / "mover" / "00000.jpg").is_file()
    rows = RunStore(str(tmp_path / "runs" / "dl")).read_metrics()
    assert [(r["sequence"], r["status"]) for r in rows] == [("mover", "ok")]
    assert str(root) in proc.stderr and "J&F" in proc.stdout
