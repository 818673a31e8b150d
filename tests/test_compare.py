"""``vosbatch compare``: deltas between two runs, regressions and the exit status, local and on S3.

Most cases use run folders written here through RunStore with chosen numbers, so every delta is
known exactly; one real run (synthetic videos through the batch worker, no Ray) checks that runs
made by the pipeline compare cleanly, also after a copy to an S3 bucket (moto server on 127.0.0.1).
"""
import shutil

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vosbatch.cli import main
from vosbatch.compare import compare_uris
from vosbatch.io.store import RunStore
from support.cli import run_cli
from support.runs import make_run
from support.synthetic import make_video, write_davis_fixture

BASE_CONFIG = {"method": "globalopt", "flow": "dis", "work_height": 96, "method_params": {"grid_stride": 4}}


def write_run(uri, rows, config=None, commit="aaa", **store_options):
    """A run folder with the given metric rows: (sequence, j, f, seconds, frames) or (sequence, 'failed')."""
    store = RunStore(str(uri), **store_options)
    store.write_run_info({"run_id": str(uri).rstrip("/").rsplit("/", 1)[-1], "config": config or BASE_CONFIG,
                          "dataset": "davis2016", "split": "val", "workers": 1, "gpus": 0, "status": "done",
                          "code": {"package": "0.1.0", "git_commit": commit}})
    for row in rows:
        if row[1] == "failed":
            store.write_metrics("davis2016", row[0], {"status": "failed", "error": f"{row[0]}/00003.jpg: cannot decode\ntrace"})
        else:
            name, j, f, seconds, frames = row
            store.write_metrics("davis2016", name, {"status": "ok", "j_mean": j, "f_mean": f, "seconds": seconds,
                                                    "frames": frames, "method": "globalopt"})
    return str(uri)


def cli(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)], catch_exceptions=False)


@pytest.fixture
def pair(tmp_path):
    """A: three sequences; B: one better, one worse and slower, one missing, one new."""
    a = write_run(tmp_path / "a", [("cows", 0.80, 0.60, 10.0, 10), ("dog", 0.50, 0.50, 4.0, 8),
                                   ("goat", 0.70, 0.70, 5.0, 5)])
    b = write_run(tmp_path / "b", [("cows", 0.70, 0.60, 20.0, 10), ("dog", 0.60, 0.40, 4.0, 8),
                                   ("libby", 0.90, 0.90, 1.0, 5)],
                  config=dict(BASE_CONFIG, flow="raft-small", method_params={"grid_stride": 8}), commit="bbb")
    return a, b


def test_per_sequence_and_overall_deltas(pair):
    cmp = compare_uris(*pair)
    by_name = {s.sequence: s for s in cmp.sequences}
    cows, dog = by_name["cows"], by_name["dog"]
    assert cows.d_j == pytest.approx(-0.10) and cows.d_f == pytest.approx(0.0) and cows.d_jf == pytest.approx(-0.05)
    assert cows.spf_a == pytest.approx(1.0) and cows.spf_b == pytest.approx(2.0) and cows.d_spf == pytest.approx(1.0)
    assert dog.d_j == pytest.approx(0.10) and dog.d_f == pytest.approx(-0.10) and dog.d_jf == pytest.approx(0.0)
    # overall means only over the sequences scored in both runs (cows, dog)
    o = cmp.overall
    assert o["sequences"] == 2
    assert o["j_a"] == pytest.approx(0.65) and o["j_b"] == pytest.approx(0.65) and o["d_j"] == pytest.approx(0.0)
    assert o["f_a"] == pytest.approx(0.55) and o["f_b"] == pytest.approx(0.50) and o["d_f"] == pytest.approx(-0.05)
    assert o["d_jf"] == pytest.approx(-0.025)
    assert o["spf_a"] == pytest.approx(14 / 18) and o["spf_b"] == pytest.approx(24 / 18)
    assert cmp.only_in_a == [("davis2016", "goat")] and cmp.only_in_b == [("davis2016", "libby")]
    assert cmp.config_diff == {"config.flow": ("dis", "raft-small"), "config.method_params.grid_stride": (4, 8),
                               "code.git_commit": ("aaa", "bbb")}
    assert [s.sequence for s in cmp.regressed_sequences(0.01)] == ["cows"]


def test_regression_threshold_decides(pair):
    cmp = compare_uris(*pair)  # overall J&F drops by 0.025
    assert cmp.regression_reasons(0.03) == []
    reasons = cmp.regression_reasons(0.02)
    assert len(reasons) == 1 and "overall J&F 0.600 -> 0.575" in reasons[0]
    assert cmp.regression_reasons(0.03, speed_threshold=0.5) and "s/frame" in cmp.regression_reasons(0.03, 0.5)[0]
    assert cmp.regression_reasons(0.03, speed_threshold=1.0) == []  # 71 % slower is within +100 %


def test_newly_failing_sequence_is_a_regression_even_when_the_mean_improves(tmp_path):
    a = write_run(tmp_path / "a", [("cows", 0.5, 0.5, 1.0, 4), ("dog", 0.2, 0.2, 1.0, 4), ("goat", "failed")])
    b = write_run(tmp_path / "b", [("cows", 0.9, 0.9, 1.0, 4), ("dog", "failed"), ("goat", 0.4, 0.4, 1.0, 4)])
    cmp = compare_uris(a, b)
    assert cmp.overall["d_jf"] == pytest.approx(0.4)  # only cows is common, and it improved
    assert cmp.newly_failed == [("davis2016", "dog")] and cmp.fixed == [("davis2016", "goat")]
    assert cmp.regression_reasons(0.01) == ["newly failed: davis2016/dog"]
    res = cli(a, b, "--fail-on-regression")
    assert res.exit_code == 1
    assert "FAILED in B: dog/00003.jpg: cannot decode" in res.output and "fixed in B: davis2016/goat" in res.output


def test_cli_table_exit_status_and_outputs(pair, tmp_path):
    a, b = pair
    res = cli(a, b, "--threshold", "0.02", "--fail-on-regression", "--out", tmp_path / "d.csv")
    assert res.exit_code == 1, res.output
    lines = res.output.splitlines()
    cows = next(line for line in lines if line.startswith("cows"))
    assert cows.split()[:9] == ["cows", "0.700", "0.650", "-0.050", "-0.100", "+0.000", "1.000", "2.000", "+1.000"]
    assert cows.endswith("REGRESSED")
    assert any(line.startswith("mean of 2 common") and "-0.025" in line for line in lines)
    assert "config.flow: \"dis\" -> \"raft-small\"" in res.output
    assert "only in A: davis2016/goat" in res.output and "only in B: davis2016/libby" in res.output
    assert "regressed sequences (ΔJ&F < -0.020): davis2016/cows (-0.050)" in res.output
    assert "REGRESSION: overall J&F" in res.output
    table = pacsv.read_csv(tmp_path / "d.csv", convert_options=pacsv.ConvertOptions(strings_can_be_null=True)).to_pylist()
    assert [r["sequence"] for r in table] == ["cows", "dog", "goat", "libby"]
    assert table[0]["d_jf"] == pytest.approx(-0.05) and table[2]["status_b"] is None
    # the same drop without --fail-on-regression, or within the threshold, exits 0
    assert cli(a, b, "--threshold", "0.02").exit_code == 0
    res = cli(a, b, "--threshold", "0.03", "--fail-on-regression", "--out", tmp_path / "d.parquet")
    assert res.exit_code == 0 and "no regression (threshold 0.030)" in res.output
    assert pq.read_table(tmp_path / "d.parquet").num_rows == 4


def test_cli_names_a_folder_that_is_not_a_run(pair, tmp_path):
    res = cli(pair[0], tmp_path / "nope")
    assert res.exit_code == 1 and "nope" in res.output and "run.json" in res.output
    res = cli(pair[0], pair[1], "--out", tmp_path / "d.txt")
    assert res.exit_code == 1 and ".csv or .parquet" in res.output


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A run made by the batch worker on two small synthetic videos."""
    tmp = tmp_path_factory.mktemp("cmp")
    vids = {"walker": make_video(frames=5, size=(48, 64), obj_size=(11, 15), seed=1),
            "runner": make_video(frames=5, size=(48, 64), obj_size=(11, 15), obj_velocity=(-2.5, 0.5),
                                 bg_velocity=(1.0, 0.0), start=(25, 45), seed=2)}
    root = write_davis_fixture(tmp / "DAVIS", vids)
    make_run(root, tmp / "runs" / "r1")
    return tmp / "runs" / "r1"


def test_a_real_run_against_its_copy_has_no_deltas(real_run, tmp_path):
    copy = tmp_path / "r2"
    shutil.copytree(real_run, copy)
    res = cli(real_run, copy, "--fail-on-regression")
    assert res.exit_code == 0, res.output
    assert "configuration: identical" in res.output and "no regression" in res.output
    for name in ("runner", "walker"):
        row = next(line for line in res.output.splitlines() if line.startswith(name)).split()
        assert row[3:6] == ["+0.000"] * 3 and float(row[1]) > 0.5


def test_compare_runs_on_s3(real_run, s3_bucket, s3_options, moto_s3_endpoint, monkeypatch):
    """A real run and a worse copy in an S3 bucket (moto on 127.0.0.1): library and command line."""
    pafs = pytest.importorskip("pyarrow.fs")
    bucket, _ = s3_bucket
    r1, r2 = f"s3://{bucket}/nightly/r1", f"s3://{bucket}/nightly/r2"
    fs = pafs.S3FileSystem(**s3_options)
    pafs.copy_files(str(real_run), f"{bucket}/nightly/r1", destination_filesystem=fs)
    # run B: the same rows with walker's J lowered by 0.2
    worse = RunStore(r2, **s3_options)
    worse.write_run_info(dict(RunStore(str(real_run)).read_run_info(), run_id="r2"))
    for row in RunStore(str(real_run)).read_metrics():
        if row["sequence"] == "walker":
            row["j_mean"] -= 0.2
        worse.write_metrics(row.pop("dataset"), row.pop("sequence"), row)
    cmp = compare_uris(r1, r2, **s3_options)
    walker = next(s for s in cmp.sequences if s.sequence == "walker")
    assert walker.d_j == pytest.approx(-0.2) and walker.d_jf == pytest.approx(-0.1)
    assert cmp.overall["d_jf"] == pytest.approx(-0.05)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the command line finds the server through --s3-endpoint-url alone
    proc = run_cli("compare", r1, r2, "--s3-endpoint-url", moto_s3_endpoint, "--fail-on-regression", check=False,
                   timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"B (candidate): {r2}" in proc.stdout
    assert "regressed sequences (ΔJ&F < -0.010): davis2016/walker (-0.100)" in proc.stdout
