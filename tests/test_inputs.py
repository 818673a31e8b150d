"""Generic inputs: video files read in windows, frame folders, manifests and s3:// prefixes."""
import pickle

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vosbatch.data import input_sequences
from vosbatch.names import safe_name, unique_names
from vosbatch.data.video import read_video
from vosbatch.errors import InputError
from support.synthetic import make_video, write_video_file

SIZE = (48, 64)


@pytest.fixture(scope="module")
def clip():
    return make_video(frames=30, size=SIZE, seed=0)


def _write_frames(folder, frames, fmt="{:d}.png"):
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        cv2.imwrite(str(folder / fmt.format(t)), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return folder


def _write_masks(folder, masks, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n, m in zip(names, masks):
        cv2.imwrite(str(folder / f"{n}.png"), m.astype(np.uint8) * 255)
    return folder


# -- video files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix,codec", [(".mp4", None), (".mkv", None), (".avi", "mpeg4")])
def test_video_windows_equal_slices_of_a_full_decode(tmp_path, clip, suffix, codec):
    path = write_video_file(tmp_path / f"clip{suffix}", clip.frames, codec=codec, gop=6)
    full = read_video(path).frames
    (seq,) = input_sequences([str(path)])
    assert seq.name == "clip" and seq.video == str(path) and seq.frame_paths == []
    assert seq.num_frames == 30 and seq.frame_names[:3] == ["00000", "00001", "00002"] and len(seq.frame_names) == 30
    for start, stop in [(0, 7), (5, 12), (13, 25), (24, 30), (29, 30)]:  # inside GOPs, on keyframes, to the end
        assert np.array_equal(seq.load_frames(start, stop), full[start:stop]), (start, stop)
    assert np.array_equal(seq.load_frames(), full)
    assert np.abs(full.astype(int) - clip.frames).mean() < 6  # and it is the video that was written
    # the timestamp index stays in the worker: pickles stay small
    assert len(pickle.dumps(seq)) < 2_000 and pickle.loads(pickle.dumps(seq)).num_frames == 30


def test_video_window_holds_only_its_frames(tmp_path):
    """Reading 10 frames near the end of a 120-frame video allocates about 10 frames, not 120."""
    import tracemalloc

    vid = make_video(frames=120, size=(96, 128), obj_velocity=(0.5, 0.2), seed=5)
    (seq,) = input_sequences([str(write_video_file(tmp_path / "long.mp4", vid.frames, gop=12))])
    seq.load_frames(0, 2)  # builds the per-process timestamp index outside the measurement
    frame_bytes = vid.frames[0].nbytes
    tracemalloc.start()
    try:
        window = seq.load_frames(105, 115)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert window.shape == (10, 96, 128, 3)
    assert peak < 25 * frame_bytes  # the whole video would be 120 frames


def test_video_windows_without_seeking(tmp_path, clip, monkeypatch):
    """Containers without packet timestamps are read by decoding from the start: same frames."""
    from vosbatch.data import video as video_mod

    path = write_video_file(tmp_path / "clip.mp4", clip.frames)
    monkeypatch.setattr(video_mod, "video_timestamps", lambda source: None)
    (seq,) = input_sequences([str(path)])
    assert np.array_equal(seq.load_frames(11, 17), read_video(path).frames[11:17])


def test_corrupt_video_names_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    (seq,) = input_sequences([str(junk)])
    assert seq.num_frames == 0  # the driver can still sort it
    with pytest.raises(InputError, match=r"junk\.mp4: cannot decode video"):
        seq.load_frames()


def test_unknown_and_missing_inputs_fail_clearly(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    missing, text = input_sequences([str(tmp_path / "nope.mp4"), str(tmp_path / "notes.txt")])
    with pytest.raises(InputError, match="nope.mp4: no such file or folder"):
        missing.check()
    with pytest.raises(InputError, match="notes.txt: not a video file"):
        text.load_frames()


# -- folders ---------------------------------------------------------------------------------------

def test_frame_folder_in_natural_order(tmp_path, clip):
    folder = _write_frames(tmp_path / "walk", clip.frames[:12], fmt="f{:d}.png")  # f0, f1, ..., f10, f11
    (seq,) = input_sequences([str(folder)])
    assert seq.name == "walk" and seq.frame_names[:3] == ["f0", "f1", "f2"] and seq.frame_names[-1] == "f11"
    assert np.array_equal(seq.load_frames(8, 12), clip.frames[8:12])
    assert seq.exclude_first_last  # generic inputs with GT follow the DAVIS protocol


def test_folder_of_videos_and_frame_folders(tmp_path, clip):
    root = tmp_path / "batch"
    write_video_file(root / "b clip.mp4", clip.frames[:8])
    write_video_file(root / "a.mkv", clip.frames[:6])
    _write_frames(root / "frames=1", clip.frames[:5])
    (root / "readme.md").write_text("not an input")
    seqs = input_sequences([str(root)])
    assert [(s.name, s.num_frames) for s in seqs] == [("a", 6), ("b_clip", 8), ("frames_1", 5)]
    assert seqs[2].load_frames(1, 3).shape == (2, *SIZE, 3)


def test_names_are_safe_and_unique(tmp_path, clip):
    assert safe_name("a=b c/d") == "a_b_c_d" and "/" not in safe_name("x/../y") and safe_name("==") == "sequence"
    assert unique_names(["x", "x", "x-2", "y", "x"]) == ["x", "x-3", "x-2", "y", "x-4"]
    one = write_video_file(tmp_path / "one" / "clip.mp4", clip.frames[:4])
    two = write_video_file(tmp_path / "two" / "clip.mp4", clip.frames[:4])
    assert [s.name for s in input_sequences([str(one), str(two), str(one)])] == ["clip", "clip-2", "clip-3"]


# -- manifests -------------------------------------------------------------------------------------

@pytest.fixture()
def manifest_inputs(tmp_path, clip):
    """A video with masks named by frame index and a frame folder with masks named like its frames."""
    data = tmp_path / "data"
    write_video_file(data / "videos" / "cam.mp4", clip.frames[:10])
    _write_masks(data / "gt" / "cam", clip.masks[:10], [f"{t:05d}" for t in range(10)])
    _write_frames(data / "frames" / "run", clip.frames[10:16], fmt="{:04d}.png")
    _write_masks(data / "gt" / "run", clip.masks[10:15], [f"{t:04d}" for t in range(5)])  # last frame unannotated
    rows = {"path": ["videos/cam.mp4", str(data / "frames" / "run"), "videos/missing.mp4"],
            "name": ["camera 1", "", ""], "gt": ["gt/cam", "gt/run", ""]}
    return data, rows


def _check_manifest_sequences(seqs, clip):
    cam, run, missing = seqs
    assert (cam.name, run.name, missing.name) == ("camera_1", "run", "missing")
    assert cam.num_frames == 10 and run.num_frames == 6
    gt = cam.load_gt(SIZE, 3, 7)
    assert all(np.array_equal(g, m) for g, m in zip(gt, clip.masks[3:7]))
    gt = run.load_gt(SIZE)
    assert gt[5] is None and np.array_equal(gt[2], clip.masks[12])
    assert np.array_equal(run.load_frames(0, 2), clip.frames[10:12])
    with pytest.raises(InputError, match="missing.mp4: no such file or folder"):
        missing.check()


def test_csv_manifest(manifest_inputs, clip):
    data, rows = manifest_inputs
    lines = ["path,name,gt"] + [",".join(r) for r in zip(rows["path"], rows["name"], rows["gt"])]
    (data / "list.csv").write_text("\n".join(lines) + "\n")
    _check_manifest_sequences(input_sequences([str(data / "list.csv")]), clip)


def test_parquet_manifest(manifest_inputs, clip):
    data, rows = manifest_inputs
    pq.write_table(pa.table(rows), data / "list.parquet")
    _check_manifest_sequences(input_sequences([str(data / "list.parquet")]), clip)


def test_manifest_without_path_column_fails_alone(tmp_path):
    """An unreadable manifest is one failed sequence naming it; the other inputs are still listed."""
    (tmp_path / "bad.csv").write_text("video,name\na.mp4,a\n")
    (tmp_path / "frames").mkdir()
    for i in range(3):
        (tmp_path / "frames" / f"{i:05d}.jpg").write_bytes(b"x")
    bad, good = input_sequences([str(tmp_path / "bad.csv"), str(tmp_path / "frames")])
    with pytest.raises(InputError, match="bad.csv: manifest has no 'path' column"):
        bad.check()
    assert good.name == "frames" and good.num_frames == 3 and good.missing_reason is None


# -- S3 (moto server on 127.0.0.1, inside loopback-ns) -----------------------------------------------

def _put_frames(client, bucket, prefix, frames):
    for t, f in enumerate(frames):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        client.put_object(Bucket=bucket, Key=f"{prefix}/{t:05d}.png", Body=buf.tobytes())


def test_s3_prefix_videos_and_frame_folders(s3_bucket, tmp_path, clip):
    bucket, client = s3_bucket
    local = write_video_file(tmp_path / "drive.mp4", clip.frames[:20])
    client.put_object(Bucket=bucket, Key="batch/videos/drive.mp4", Body=local.read_bytes())
    _put_frames(client, bucket, "batch/frames/walk", clip.frames[:7])
    client.put_object(Bucket=bucket, Key="batch/notes.txt", Body=b"ignored")
    seqs = input_sequences([f"s3://{bucket}/batch"])
    assert [(s.name, s.num_frames) for s in seqs] == [("drive", 20), ("walk", 7)]
    drive, walk = seqs
    assert drive.video == f"s3://{bucket}/batch/videos/drive.mp4"
    assert np.array_equal(drive.load_frames(9, 15), read_video(local).frames[9:15])
    assert np.array_equal(walk.load_frames(2, 5), clip.frames[2:5])
    assert walk.frame_names[:2] == ["00000", "00001"]
    client.put_object(Bucket=bucket, Key="batch/frames/walk/00003.png", Body=b"broken")
    with pytest.raises(InputError, match=rf"s3://{bucket}/batch/frames/walk/00003.png: cannot decode image"):
        walk.load_frames()
    (empty,) = input_sequences([f"s3://{bucket}/nothing-here"])
    with pytest.raises(InputError, match="no objects under this prefix"):
        empty.check()


def test_s3_manifest_with_s3_and_relative_entries(s3_bucket, tmp_path, clip):
    bucket, client = s3_bucket
    local = write_video_file(tmp_path / "cam.mp4", clip.frames[:10])
    client.put_object(Bucket=bucket, Key="ds/videos/cam.mp4", Body=local.read_bytes())
    _put_frames(client, bucket, "ds/frames/run", clip.frames[:5])
    for t, m in enumerate(clip.masks[:5]):
        client.put_object(Bucket=bucket, Key=f"ds/gt/run/{t:05d}.png", Body=cv2.imencode(".png", m.astype(np.uint8) * 255)[1].tobytes())
    manifest = f"path,gt\ns3://{bucket}/ds/videos/cam.mp4,\nframes/run,gt/run\n"
    client.put_object(Bucket=bucket, Key="ds/list.csv", Body=manifest.encode())
    cam, run = input_sequences([f"s3://{bucket}/ds/list.csv"])
    assert (cam.name, cam.num_frames, run.name, run.num_frames) == ("cam", 10, "run", 5)
    assert np.array_equal(cam.load_frames(4, 8), read_video(local).frames[4:8])
    gt = run.load_gt(SIZE, 1, 4)
    assert all(np.array_equal(g, m) for g, m in zip(gt, clip.masks[1:4]))
