"""DAVIS layout reading and the clear errors bad input must produce."""
import numpy as np
import pytest

from vosbatch.data import davis_sequences, split_names
from vosbatch.errors import InputError
from support.synthetic import make_video, write_davis_fixture


@pytest.fixture()
def davis_root(tmp_path):
    vids = {"alpha": make_video(frames=4, size=(32, 48), seed=0), "beta": make_video(frames=3, size=(32, 48), seed=1)}
    return write_davis_fixture(tmp_path / "DAVIS", vids)


def test_reads_official_layout_in_split_order(davis_root):
    assert split_names(davis_root, "val") == ["alpha", "beta"]
    seqs = davis_sequences(davis_root)
    assert [s.name for s in seqs] == ["alpha", "beta"]
    frames = seqs[0].load_frames()
    assert frames.shape == (4, 32, 48, 3) and frames.dtype == np.uint8
    gt = seqs[0].load_gt(frames.shape[1:3])
    assert len(gt) == 4 and gt[0].dtype == bool and gt[0].any()
    assert seqs[0].frame_names == ["00000", "00001", "00002", "00003"]


def test_named_sequences_and_unknown_name(davis_root):
    seqs = davis_sequences(davis_root, sequences=["beta", "nope"])
    assert seqs[0].name == "beta"
    with pytest.raises(InputError, match="unknown sequence 'nope'"):
        seqs[1].load_frames()


def test_corrupt_frame_names_the_file(davis_root):
    bad = davis_root / "JPEGImages" / "480p" / "alpha" / "00002.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(InputError, match="00002.jpg"):
        davis_sequences(davis_root, sequences=["alpha"])[0].load_frames()


def test_single_frame_sequence_is_rejected(davis_root):
    folder = davis_root / "JPEGImages" / "480p" / "beta"
    for p in sorted(folder.iterdir())[1:]:
        p.unlink()
    with pytest.raises(InputError, match="1 frame"):
        davis_sequences(davis_root, sequences=["beta"])[0].load_frames()


def test_gt_of_another_size_names_the_file(davis_root):
    import cv2

    gt = davis_root / "Annotations" / "480p" / "alpha" / "00001.png"
    cv2.imwrite(str(gt), np.zeros((10, 10), np.uint8))
    seq = davis_sequences(davis_root, sequences=["alpha"])[0]
    frames = seq.load_frames()
    with pytest.raises(InputError, match="00001.png.*differs"):
        seq.load_gt(frames.shape[1:3])


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(InputError, match="JPEGImages"):
        davis_sequences(tmp_path / "nowhere")
