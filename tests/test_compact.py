"""Compaction: a run's per-sequence files folded into a few large Parquet files, atomically, idempotently and
resumably, on local disk and on S3 (the moto server); every reader sees the same rows before and after."""
import numpy as np
import pyarrow.fs as pafs
import pytest

from vosbatch.io import compact as compaction
from vosbatch.io.png import decode_mask
from vosbatch.io.store import RunStore


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    bucket, _ = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/run"


def _masks(seed: int, t: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((t, 12, 16)) > 0.6


def _write(store: RunStore, name: str, seed: int, status: str = "ok", config_hash: str = "h") -> None:
    if status == "ok":
        store.write_masks("inputs", name, [f"{t:05d}" for t in range(3)], _masks(seed))
    store.write_metrics("inputs", name, {"method": "globalopt", "frames": 3, "status": status, "config_hash": config_hash,
                                         "error": None if status == "ok" else "boom", "seconds": float(seed)})


def _snapshot(store: RunStore):
    metrics = {(r["dataset"], r["sequence"]): (r["status"], r["seconds"]) for r in store.read_metrics()}
    masks = {}
    for key in store.mask_keys():
        table = store.read_masks(*key)
        masks[key] = [decode_mask(p).tolist() for p in table.column("mask_png").to_pylist()]
    return metrics, masks


def _small_files(store: RunStore) -> int:
    return len(store.sequence_files("metrics")) + len(store.sequence_files("masks"))


def test_compaction_keeps_every_row_of_finished_and_failed_sequences(run_uri):
    store = RunStore(run_uri)
    store.write_run_info({"run_id": "run"})
    for i in range(5):
        _write(store, f"s{i}", i, status="failed" if i == 3 else "ok")
    before = _snapshot(store)
    result = store.compact(row_group_bytes=2_000)  # tiny row groups: several per file
    assert result.generation == 1 and result.added == 5 and result.sequences == 5
    assert _small_files(store) == 0 and result.deleted == 9  # 5 metrics + 4 masks files
    assert _snapshot(store) == before
    assert store.completed("h") == {("inputs", f"s{i}") for i in (0, 1, 2, 4)}
    again = store.compact()  # nothing new: nothing changes
    assert again.added == 0 and again.generation == 1 and _snapshot(store) == before


def test_a_sequence_rerun_after_compaction_wins_over_its_compacted_rows(run_uri):
    store = RunStore(run_uri)
    for i in range(3):
        _write(store, f"s{i}", i, status="failed" if i == 1 else "ok")
    store.compact()
    _write(store, "s1", 42)  # a resumed run finishes the failed sequence
    _write(store, "s3", 43)
    metrics, masks = _snapshot(store)
    assert metrics[("inputs", "s1")] == ("ok", 42.0) and len(metrics) == 4
    assert masks[("inputs", "s1")] == [m.tolist() for m in _masks(42)]
    assert store.completed("h") == {("inputs", f"s{i}") for i in range(4)}  # what a resume skips
    result = store.compact()
    assert result.generation == 2 and result.added == 2 and result.sequences == 4
    assert _snapshot(store) == (metrics, masks) and _small_files(store) == 0
    assert store.completed("h") == {("inputs", f"s{i}") for i in range(4)} and not store.completed("other")


def test_an_interrupted_compaction_changes_nothing_and_the_next_one_finishes(run_uri, monkeypatch):
    store = RunStore(run_uri)
    for i in range(4):
        _write(store, f"s{i}", i)
    before = _snapshot(store)
    real = RunStore._put_bytes

    def crash_at_commit(self, rel, data):
        if rel == compaction.CURRENT:
            raise KeyboardInterrupt("killed before the commit")
        return real(self, rel, data)

    monkeypatch.setattr(RunStore, "_put_bytes", crash_at_commit)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.setattr(RunStore, "_put_bytes", real)
    assert store.compaction_state() is None and _snapshot(store) == before and _small_files(store) == 8
    result = store.compact()
    assert result.generation == 1 and _snapshot(store) == before and _small_files(store) == 0
    generations = [i.base_name for i in store.fs.get_file_info(pafs.FileSelector(f"{store.root}/compacted"))
                   if i.type == pafs.FileType.Directory]
    assert generations == ["g000001"]  # what the interrupted attempt wrote is gone


def test_a_sequence_finishing_while_compaction_runs_is_never_lost(run_uri, monkeypatch):
    store = RunStore(run_uri)
    for i in range(3):
        _write(store, f"s{i}", i, status="failed" if i == 2 else "ok")
    real = compaction._per_sequence_table

    def rewritten_meanwhile(st, kind, files, keys):
        if kind == "masks":  # after the snapshot, before the deletions: a worker stores s2's new result
            _write(RunStore(run_uri), "s2", 99)
        yield from real(st, kind, files, keys)

    monkeypatch.setattr(compaction, "_per_sequence_table", rewritten_meanwhile)
    result = store.compact()
    assert result.kept >= 1
    metrics, masks = _snapshot(store)
    assert metrics[("inputs", "s2")] == ("ok", 99.0) and masks[("inputs", "s2")] == [m.tolist() for m in _masks(99)]


def test_duckdb_reads_a_compacted_run(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    store = RunStore(str(tmp_path / "run"))
    for i in range(6):
        _write(store, f"s{i}", i, status="failed" if i == 5 else "ok")
    store.compact()
    con = duckdb.connect()
    rows = con.execute(f"SELECT sequence, status FROM read_parquet('{tmp_path}/run/compacted/*/metrics-*.parquet') "
                       "ORDER BY sequence").fetchall()
    assert rows == [(f"s{i}", "failed" if i == 5 else "ok") for i in range(6)]
    frames = con.execute(f"SELECT dataset, sequence, count(*) FROM read_parquet('{tmp_path}/run/compacted/*/masks-*.parquet') "
                         "GROUP BY ALL ORDER BY sequence").fetchall()
    assert frames == [("inputs", f"s{i}", 3) for i in range(5)]


def test_duckdb_reads_a_compacted_run_on_s3_through_pyarrow(s3_bucket):
    """DuckDB's own S3 reader is an extension it downloads; offline it reads the run through pyarrow's S3 filesystem."""
    duckdb = pytest.importorskip("duckdb")
    import pyarrow.dataset as pads

    bucket, _ = s3_bucket
    store = RunStore(f"s3://{bucket}/runs/run")
    for i in range(3):
        _write(store, f"s{i}", i)
    store.compact()
    metrics = pads.dataset([f"{store.root}/{f}" for f in store.compaction_state()["metrics"]], filesystem=store.fs)
    con = duckdb.connect()
    con.register("metrics", metrics)
    rows = con.execute("SELECT sequence, frames FROM metrics ORDER BY sequence").fetchall()
    assert rows == [(f"s{i}", 3) for i in range(3)]


@pytest.mark.ray
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_resume_after_compaction_recomputes_nothing_finished(where, tmp_path, request):
    """Through the command line: a run with a finished and a failed sequence is compacted at its end; ``--resume``
    finds the finished one in ``compacted/``, leaves it alone, and tries the failed one again."""
    from support.cli import run_cli
    from support.synthetic import make_video, write_davis_fixture

    root = write_davis_fixture(tmp_path / "D", {"good": make_video(frames=8, size=(48, 64), seed=1)})
    output = str(tmp_path / "runs") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')[0]}/runs"
    small = ["--work-height", "48", "--refine", "fgs", "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2"]
    run_cli("submit", "--data-root", root, "--output", output, "--run-id", "r", "--sequences", "good,missing",
            "--no-progress", *small)
    store = RunStore(f"{output}/r")
    assert store.compaction_state() is not None and _small_files(store) == 0
    before = {r["sequence"]: (r["status"], r["seconds"]) for r in store.read_metrics()}
    masks = store.read_masks().column("mask_png").to_pylist()
    assert before["good"][0] == "ok" and before["missing"][0] == "failed" and len(masks) == 8
    res = run_cli("submit", "--output", output, "--resume", "r", "--no-progress")
    assert "resume: 1 of 2 sequences already done" in res.stderr
    after = {r["sequence"]: (r["status"], r["seconds"]) for r in store.read_metrics()}
    assert after["good"] == before["good"] and after["missing"][0] == "failed"
    assert store.read_masks().column("mask_png").to_pylist() == masks
    assert store.read_run_info()["status"] == "done"
