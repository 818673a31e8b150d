"""Run storage: Parquet layout, round trips, atomic files, unwritable outputs."""
import os

import numpy as np
import pyarrow.dataset as pads
import pytest

from vosbatch.errors import OutputError
from vosbatch.io.png import decode_mask, encode_mask
from vosbatch.io.store import RunStore


def test_png_roundtrip_is_lossless():
    rng = np.random.default_rng(0)
    m = rng.random((37, 53)) > 0.5
    assert np.array_equal(decode_mask(encode_mask(m)), m)


def test_masks_and_metrics_are_hive_partitioned_and_read_back(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    rng = np.random.default_rng(1)
    masks = rng.random((3, 20, 30)) > 0.7
    store.write_masks("davis2016", "seqA", ["00000", "00001", "00002"], masks)
    store.write_masks("davis2016", "seqB", ["a", "b", "c"], ~masks)
    store.write_metrics("davis2016", "seqA", {"method": "globalopt", "frames": 3, "j_mean": 0.5, "status": "ok"})
    store.write_metrics("davis2016", "seqB", {"method": "globalopt", "frames": 3, "status": "failed", "error": "boom"})
    assert (tmp_path / "run/masks/dataset=davis2016/sequence=seqA/part-0.parquet").is_file()
    # any Parquet reader sees one dataset with the partition columns
    table = pads.dataset(str(tmp_path / "run/masks"), partitioning="hive").to_table()
    assert table.num_rows == 6
    assert {"dataset", "sequence", "frame", "frame_name", "height", "width", "mask_png"} <= set(table.column_names)
    a = store.read_masks(sequence="seqA")
    assert a.column("frame").to_pylist() == [0, 1, 2]
    for i, png in enumerate(a.column("mask_png").to_pylist()):
        assert np.array_equal(decode_mask(png), masks[i])
    rows = store.read_metrics()
    assert [(r["sequence"], r["status"]) for r in rows] == [("seqA", "ok"), ("seqB", "failed")]
    assert rows[1]["error"] == "boom" and rows[1]["j_mean"] is None


def test_rewrites_replace_whole_files_and_leave_no_temporaries(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    store.write_masks("d", "s", ["0", "1"], np.zeros((2, 4, 4), bool))
    store.write_masks("d", "s", ["0", "1", "2"], np.ones((3, 4, 4), bool))
    assert store.read_masks().num_rows == 3
    leftovers = [f for _, _, fs in os.walk(tmp_path) for f in fs if f.startswith(".tmp")]
    assert leftovers == []


def test_unwritable_output_is_a_clear_error(tmp_path):
    from vosbatch.runner.job import check_output_writable

    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(OutputError, match=f"output not writable: {blocker}/out.*cannot write"):
        check_output_writable(str(blocker / "out"))
    check_output_writable(str(tmp_path / "out"))  # a writable one: the probe leaves nothing behind
    assert list((tmp_path / "out").iterdir()) == []
