"""SegTrack-v2 and FBMS-59 in their official layouts, the dataset registry and their downloads."""
import hashlib
import io
import pickle
import zipfile

import cv2
import numpy as np
import pytest

from vosbatch.data import DATASETS, list_sequences
from vosbatch.data import download as dl
from vosbatch.data.fbms import parse_definition
from vosbatch.errors import InputError
from support.synthetic import (
    make_video, write_davis_fixture, write_fbms59_fixture, write_segtrackv2_fixture,
)

SIZE = (32, 48)


@pytest.fixture(scope="module")
def st_videos():
    return {"birdfall": make_video(frames=4, size=SIZE, seed=0), "bmx": make_video(frames=3, size=SIZE, seed=1),
            "girl": make_video(frames=3, size=SIZE, seed=2)}


@pytest.fixture()
def segtrack_root(tmp_path, st_videos):
    # bmx: two objects, frames .bmp, masks .bmp; girl: .jpg frames; birdfall: .png frames, one object
    return write_segtrackv2_fixture(tmp_path / "SegTrackv2", st_videos, objects={"bmx": 2},
                                    image_format={"bmx": ".bmp", "girl": ".jpg"}, gt_format={"bmx": ".bmp"})


@pytest.fixture(scope="module")
def fbms_videos():
    slow = dict(size=(24, 32), obj_size=(5, 7), obj_velocity=(0.4, 0.1), start=(10.0, 7.0))  # stays in view
    return {"cars1": make_video(frames=45, seed=3, **slow), "tennis": make_video(frames=25, seed=4, **slow)}


@pytest.fixture()
def fbms_root(tmp_path, fbms_videos):
    # cars1: cars1_01.jpg..., two grey regions (.pgm); tennis: tennis_0.jpg... unpadded, colour .ppm labels
    return write_fbms59_fixture(tmp_path / "FBMS", fbms_videos, first_number={"tennis": 0}, pad={"tennis": 1},
                                label_format={"tennis": ".ppm"}, objects={"cars1": 2})


def test_registry_names():
    assert DATASETS == ("davis2016", "segtrackv2", "fbms59")
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        list_sequences("nope", "/tmp")


def test_davis_through_registry(tmp_path):
    root = write_davis_fixture(tmp_path / "DAVIS", {"alpha": make_video(frames=3, size=SIZE)})
    (seq,) = list_sequences("davis2016", root)
    assert seq.name == "alpha" and seq.exclude_first_last and seq.num_frames == 3


# -- SegTrack-v2 ---------------------------------------------------------------------------------

def test_segtrack_layout_mixed_formats_and_order(segtrack_root, st_videos):
    seqs = list_sequences("segtrackv2", segtrack_root)
    assert [s.name for s in seqs] == ["birdfall", "bmx", "girl"]  # ImageSets/all.txt order, '*' dropped
    suffixes = {s.name: {p.suffix for p in s.frame_paths} for s in seqs}
    assert suffixes == {"birdfall": {".png"}, "bmx": {".bmp"}, "girl": {".jpg"}}
    for s in seqs:
        assert not s.exclude_first_last
        frames = s.load_frames()
        vid = st_videos[s.name]
        assert frames.shape == vid.frames.shape
        lossless = s.name != "girl"
        assert (np.array_equal(frames, vid.frames) if lossless else np.abs(frames.astype(int) - vid.frames).mean() < 4)
        assert s.frame_names == [f"{s.name}_{t:05d}" for t in range(len(vid.frames))]


def test_segtrack_multi_object_masks_are_merged(segtrack_root, st_videos):
    (bmx,) = list_sequences("segtrackv2", segtrack_root, sequences=["bmx"])
    assert bmx.meta["objects"] == 2 and all(isinstance(e, tuple) and len(e) == 2 for e in bmx.gt_paths)
    one_object = cv2.imread(str(bmx.gt_paths[1][0]), cv2.IMREAD_GRAYSCALE) > 0
    truth = st_videos["bmx"].masks
    assert one_object.sum() < truth[1].sum()  # each folder holds only part of the object...
    gt = bmx.load_gt(SIZE)
    assert all(np.array_equal(g, m) for g, m in zip(gt, truth))  # ...their union is all of it


def test_segtrack_frame_order_follows_imagesets(segtrack_root):
    listing = segtrack_root / "ImageSets" / "birdfall.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join([lines[0], lines[3], lines[1], lines[2], lines[4]]) + "\n")
    (seq,) = list_sequences("segtrackv2", segtrack_root, sequences=["birdfall"])
    assert seq.frame_names == ["birdfall_00002", "birdfall_00000", "birdfall_00001", "birdfall_00003"]
    gt = seq.load_gt(SIZE)
    assert seq.gt_paths[0].stem == "birdfall_00002" and gt[0].any()


def test_segtrack_windows_and_unknown_name(segtrack_root, st_videos):
    seqs = list_sequences("segtrackv2", segtrack_root, sequences=["birdfall", "nope"])
    assert np.array_equal(seqs[0].load_frames(1, 3), seqs[0].load_frames()[1:3])
    gt = seqs[0].load_gt(SIZE, 2, 4)
    assert len(gt) == 2 and np.array_equal(gt[1], st_videos["birdfall"].masks[3])
    with pytest.raises(InputError, match="unknown sequence 'nope'"):
        seqs[1].load_frames()


def test_segtrack_corrupt_files_are_named(segtrack_root):
    (bmx,) = list_sequences("segtrackv2", segtrack_root, sequences=["bmx"])
    bmx.frame_paths[1].write_bytes(b"BM garbage")
    with pytest.raises(InputError, match=r"bmx_00001\.bmp: cannot decode image"):
        bmx.load_frames()
    bad_gt = bmx.gt_paths[2][1]
    bad_gt.write_bytes(b"junk")
    with pytest.raises(InputError, match=r"2/bmx_00002\.bmp: cannot read mask"):
        bmx.load_gt(SIZE)


def test_segtrack_missing_root_is_clear(tmp_path):
    with pytest.raises(InputError, match="JPEGImages"):
        list_sequences("segtrackv2", tmp_path / "nowhere")


# -- FBMS-59 -------------------------------------------------------------------------------------

def test_fbms_sparse_gt_aligned_to_the_annotated_frames(fbms_root, fbms_videos):
    seqs = {s.name: s for s in list_sequences("fbms59", fbms_root, split="val")}
    assert sorted(seqs) == ["cars1", "tennis"]
    cars = seqs["cars1"]
    assert not cars.exclude_first_last and cars.num_frames == 45 and cars.frame_names[0] == "cars1_01"
    gt = cars.load_gt(cars.load_frames(0, 2).shape[1:3])
    annotated = [t for t, m in enumerate(gt) if m is not None]
    assert annotated == [0, 20, 40]
    # two grey regions merged into one object mask, equal to the true object on exactly those frames
    assert all(gt[t].any() and np.array_equal(gt[t], fbms_videos["cars1"].masks[t]) for t in annotated)
    assert not np.array_equal(gt[20], fbms_videos["cars1"].masks[40])
    # a window sees the same annotations at window-relative positions
    win = cars.load_gt((24, 32), 15, 30)
    assert [t for t, m in enumerate(win) if m is not None] == [5] and np.array_equal(win[5], gt[20])


def test_fbms_unpadded_numbering_and_colour_labels(fbms_root, fbms_videos):
    (tennis,) = list_sequences("fbms59", fbms_root, sequences=["tennis"])
    # tennis_0, tennis_1, ..., tennis_10: numeric order, not tennis_0, tennis_1, tennis_10, ...
    assert tennis.frame_names[:12] == [f"tennis_{i}" for i in range(12)]
    frames = tennis.load_frames()
    assert np.abs(frames.astype(int) - fbms_videos["tennis"].frames).mean() < 4
    gt = tennis.load_gt(frames.shape[1:3])
    assert [t for t, m in enumerate(gt) if m is not None] == [0, 20]
    assert np.array_equal(gt[20], fbms_videos["tennis"].masks[20])  # white background in the .ppm


def test_fbms_alignment_follows_input_file_names(fbms_root, fbms_videos):
    """Frames are matched by the definition's input file names, whatever its frame numbers say."""
    definition = fbms_root / "Testset" / "cars1" / "GroundTruth" / "cars1Def.dat"
    text = definition.read_text()
    for n in (40, 20, 0):  # 1-based frame numbers, as a definition file could have
        text = text.replace(f"Frame number:\n{n}\n", f"Frame number:\n{n + 1}\n")
    definition.write_text(text)
    (seq,) = list_sequences("fbms59", fbms_root, sequences=["cars1"])
    gt = seq.load_gt((24, 32))
    assert [t for t, m in enumerate(gt) if m is not None] == [0, 20, 40]
    assert np.array_equal(gt[20], fbms_videos["cars1"].masks[20])
    # an annotated frame that is missing fails the sequence, naming it, instead of shifting the rest
    sorted((fbms_root / "Testset" / "cars1").glob("*.jpg"))[0].unlink()
    (seq,) = list_sequences("fbms59", fbms_root, sequences=["cars1"])
    with pytest.raises(InputError, match="cars1_01_gt.pgm annotates cars1_01.ppm, but .* has no frame cars1_01"):
        seq.check()


def test_fbms_definition_variants(tmp_path):
    text = ("Ground truth definition file; do not change!\n\nTotal number of regions:\n2\n"
            "Scale of region 0:\n0\nScale of region 1:\n255\n\nConfusion penality matrix:\n0 1\n1 0\n\n"
            "Total number of frames in this shot:\n19\nTotal number of labeled frames for this shot:\n2\n"
            "Frame number:\n0\nFile name:\nx_01_gt.pgm\nInput file name:\nx_01.ppm\n"
            "Frame number:\n18\nFile name:\nx_19_gt.pgm\nInput file name:\nx_19.ppm\n")
    (tmp_path / "xDef.dat").write_text(text.replace("\n", "\r\n"))
    d = parse_definition(tmp_path / "xDef.dat")
    assert d.region_colours == [0, 255] and d.total_frames == 19
    assert d.labelled == [(0, "x_01_gt.pgm", "x_01.ppm"), (18, "x_19_gt.pgm", "x_19.ppm")]
    (tmp_path / "bad.dat").write_text("hello\n")
    with pytest.raises(InputError, match="bad.dat: not an FBMS definition file"):
        parse_definition(tmp_path / "bad.dat")


def test_fbms_unknown_name_and_bad_files(fbms_root):
    seqs = list_sequences("fbms59", fbms_root, sequences=["cars1", "nope"])
    with pytest.raises(InputError, match="unknown sequence 'nope'"):
        seqs[1].check()
    label = fbms_root / "Testset" / "cars1" / "GroundTruth" / "cars1_21_gt.pgm"
    label.write_bytes(b"P5 not really")
    with pytest.raises(InputError, match="cars1_21_gt.pgm: cannot read mask"):
        seqs[0].load_gt((24, 32))
    definition = fbms_root / "Testset" / "cars1" / "GroundTruth" / "cars1Def.dat"
    # input names matching no frame: aligned by frame number, and 99 is past the 45 frames
    definition.write_text(definition.read_text().replace("Frame number:\n40", "Frame number:\n99")
                          .replace("Input file name:\ncars1_", "Input file name:\nrenamed_"))
    (seq,) = list_sequences("fbms59", fbms_root, sequences=["cars1"])
    with pytest.raises(InputError, match="cars1Def.dat: annotated frame number 99"):
        seq.load_frames()


def test_fbms_root_may_be_the_test_folder_itself(fbms_root):
    assert [s.name for s in list_sequences("fbms59", fbms_root / "Testset")] == ["cars1", "tennis"]
    with pytest.raises(InputError, match="Testset"):
        list_sequences("fbms59", fbms_root / "nowhere")


def test_sequences_stay_small_when_pickled(fbms_root):
    (seq,) = list_sequences("fbms59", fbms_root, sequences=["cars1"])
    seq.load_gt((24, 32))
    clone = pickle.loads(pickle.dumps(seq))
    assert clone == seq and len(pickle.dumps(seq)) < 20_000


# -- downloads -----------------------------------------------------------------------------------

def _zip_of(folder, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, f"{prefix}{p.relative_to(folder)}" if prefix else str(p.relative_to(folder)))
        zf.writestr("__MACOSX/._junk", b"junk")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _fast_downloads(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(dl, "TIMEOUT_S", 5.0)
    for name in ("SEGTRACKV2", "FBMS59"):
        monkeypatch.delenv(f"VOSBATCH_{name}_URL", raising=False)
        monkeypatch.delenv(f"VOSBATCH_{name}_SHA256", raising=False)


def test_registry_has_official_archives():
    st, fb = dl.DATASET_ARCHIVES["segtrackv2"], dl.DATASET_ARCHIVES["fbms59"]
    assert st.url == "https://web.engr.oregonstate.edu/~lif/SegTrack2/SegTrackv2.zip" and st.strip_prefix == "SegTrackv2"
    assert fb.url == "https://lmb.informatik.uni-freiburg.de/resources/datasets/fbms/FBMS_Testset.zip"
    assert fb.strip_prefix is None and fb.extracted_marker == "Testset"


def test_download_segtrackv2_then_list(static_http_server, tmp_path, monkeypatch, segtrack_root, st_videos):
    www, url = static_http_server
    raw = _zip_of(segtrack_root, "SegTrackv2/")  # the official zip's top folder
    (www / "SegTrackv2.zip").write_bytes(raw)
    monkeypatch.setenv("VOSBATCH_SEGTRACKV2_URL", f"{url}/SegTrackv2.zip")
    monkeypatch.setenv("VOSBATCH_SEGTRACKV2_SHA256", hashlib.sha256(raw).hexdigest())
    root = dl.ensure_dataset("segtrackv2", tmp_path / "data" / "segtrackv2", progress=False)
    assert (root / "JPEGImages" / "bmx").is_dir() and not (root / "SegTrackv2").exists()
    seqs = list_sequences("segtrackv2", root)
    assert [s.name for s in seqs] == ["birdfall", "bmx", "girl"]
    assert np.array_equal(seqs[1].load_gt(SIZE)[0], st_videos["bmx"].masks[0])
    (www / "SegTrackv2.zip").unlink()  # present: no network the second time
    assert dl.ensure_dataset("segtrackv2", root, progress=False) == root


def test_download_fbms59_then_list_and_checksum(static_http_server, tmp_path, monkeypatch, fbms_root):
    www, url = static_http_server
    raw = _zip_of(fbms_root, "")  # top folder Testset/, as in FBMS_Testset.zip
    (www / "FBMS_Testset.zip").write_bytes(raw)
    monkeypatch.setenv("VOSBATCH_FBMS59_URL", f"{url}/FBMS_Testset.zip")
    monkeypatch.setenv("VOSBATCH_FBMS59_SHA256", "0" * 64)
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.ensure_dataset("fbms59", tmp_path / "fbms", progress=False)
    monkeypatch.setenv("VOSBATCH_FBMS59_SHA256", hashlib.sha256(raw).hexdigest())
    root = dl.ensure_dataset("fbms59", tmp_path / "fbms", progress=False)
    seqs = list_sequences("fbms59", root)
    assert [s.name for s in seqs] == ["cars1", "tennis"]
    assert [t for t, m in enumerate(seqs[0].load_gt((24, 32))) if m is not None] == [0, 20, 40]
