"""Reports and single-video segmentation, checked the way a person would look at them.

A small real run (synthetic DAVIS-layout videos through the batch worker, no Ray) is turned into
HTML reports that headless Chromium loads: no console errors, one table row per sequence, every
video and image decodes, a screenshot is written. ``segment`` runs on a frame folder and on a video
file written here with PyAV.
"""
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vosbatch.cli import main
from vosbatch.config import RunConfig
from vosbatch.io.store import RunStore
from vosbatch.report import overlay as ov
from support.cli import run_cli
from support.runs import SMALL_CONFIG, make_run
from support.synthetic import make_video, write_davis_fixture

SMALL = ["--work-height", "96", "-p", "spectral.grid_stride=4", "-p", "optimisation.stride=2"]


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (default small config) and run B (no refinement) over two videos and a broken one."""
    tmp = tmp_path_factory.mktemp("report")
    vids = {
        "walker": make_video(frames=8, size=(96, 128), seed=1),
        "runner": make_video(frames=7, size=(96, 128), obj_velocity=(-2.5, 0.5), bg_velocity=(1.0, 0.0),
                             start=(50, 90), seed=2),
        "broken": make_video(frames=6, size=(96, 128), seed=3),
    }
    root = write_davis_fixture(tmp / "DAVIS", vids)
    (root / "JPEGImages/480p/broken/00003.jpg").write_bytes(b"\x00garbage")
    make_run(root, tmp / "runs" / "run-a")
    make_run(root, tmp / "runs" / "run-b", RunConfig(**SMALL_CONFIG, refine="none"))
    return {"root": root, "a": tmp / "runs" / "run-a", "b": tmp / "runs" / "run-b", "vids": vids, "tmp": tmp}


@pytest.fixture(scope="module")
def browser():
    from support.browser import Chromium, ensure_chromium

    path, why = ensure_chromium()
    if not path:
        pytest.skip(f"headless Chromium unavailable: {why}")
    with Chromium(path) as b:
        yield b


ROWS_JS = "Array.from(document.querySelectorAll('#scores-table tbody tr')).map(r => r.dataset.sequence)"


def check_page(browser, page_path: Path, screenshot: Path) -> dict:
    """Open the page; assert no console errors and that every video/image decoded; screenshot it."""
    from support.browser import media_state

    page = browser.open(page_path.resolve().as_uri())
    media = media_state(page)
    errors = page.console_errors()
    assert errors == [], errors
    assert media["videos"], "no <video> on the page"
    for v in media["videos"]:
        assert v["error"] is None and v["readyState"] >= 2 and v["width"] > 0 and v["duration"] > 0, v
    for img in media["images"]:
        assert img["complete"] and img["naturalWidth"] > 0, img
    page.screenshot(screenshot)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shot = cv2.imread(str(screenshot))
    assert shot.shape[1] == 1280 and shot.shape[0] > 900 and shot.std() > 10  # a full page with content
    return {"page": page, "media": media}


def test_report_of_a_run_in_headless_chromium(runs, browser, tmp_path):
    out = tmp_path / "report.html"
    res = cli("report", runs["a"], "-o", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert out.is_file() and (tmp_path / "report_media").is_dir()
    got = check_page(browser, out, tmp_path / "report.png")
    page, media = got["page"], got["media"]
    assert sorted(page.evaluate(ROWS_JS)) == ["broken", "runner", "walker"]  # one row per sequence
    assert page.evaluate("document.querySelector('tr[data-sequence=broken] td:nth-child(2)').textContent") == "failed"
    assert {v["id"] for v in media["videos"]} == {"seq-davis2016-walker-video", "seq-davis2016-runner-video"}
    walker = next(v for v in media["videos"] if "walker" in v["id"])
    assert (walker["width"], walker["height"]) == (128, 96) and walker["duration"] == pytest.approx(0.8, abs=0.15)
    assert len(media["images"]) == 2 * 3  # the 3 worst frames of each sequence
    assert page.evaluate("document.querySelectorAll('svg.chart').length") >= 4  # J bars, 2 curves, timing
    assert "grid_stride" in page.evaluate("document.getElementById('config-table').textContent")
    # sorting: J&F ascending puts the lower-scoring sequence first and the failed (empty) one last
    page.evaluate("document.querySelector('#scores-table thead th:nth-child(4)').click()")
    rows = page.evaluate(ROWS_JS)
    metrics = {r["sequence"]: r for r in RunStore(str(runs["a"])).read_metrics()}
    jf = {s: (metrics[s]["j_mean"] + metrics[s]["f_mean"]) / 2 for s in ("walker", "runner")}
    assert rows == sorted(jf, key=jf.get) + ["broken"]
    # the video plays, and a worst-frame thumbnail seeks it
    t = page.evaluate("""(async () => { const v = document.getElementById('seq-davis2016-walker-video');
        await v.play(); await new Promise(r => setTimeout(r, 400)); v.pause(); return v.currentTime; })()""")
    assert t > 0
    seek = page.evaluate("""(() => { const i = document.querySelector('img[data-video="seq-davis2016-walker-video"]');
        i.click(); return [parseFloat(i.dataset.seek), document.getElementById('seq-davis2016-walker-video').currentTime]; })()""")
    assert seek[1] == pytest.approx(seek[0], abs=1e-3)
    assert page.console_errors() == []


def test_compare_two_runs_side_by_side(runs, browser, tmp_path):
    out = tmp_path / "cmp"
    res = cli("report", runs["a"], "--compare", runs["b"], "-o", out, "--no-progress", "--curves", "walker")
    assert res.exit_code == 0, res.output
    got = check_page(browser, out / "index.html", tmp_path / "compare.png")
    page, media = got["page"], got["media"]
    assert sorted(page.evaluate(ROWS_JS)) == ["broken", "runner", "walker"]
    heads = page.evaluate("Array.from(document.querySelectorAll('#scores-table th')).map(t => t.textContent)")
    assert {"J&F A", "J&F B", "Δ J&F"} <= set(heads)
    diff = page.evaluate("Array.from(document.querySelectorAll('#config-table tr.diff th')).map(t => t.textContent)")
    assert diff == ["refine"]  # the one setting that differs is highlighted
    assert page.evaluate("document.querySelectorAll('#curves svg').length") == 1  # --curves walker
    for v in media["videos"]:
        assert (v["width"], v["height"]) == (2 * 128 + 4, 96)  # A | B panels side by side
    assert len(media["images"]) == 2 * 2 * 3


def test_self_contained_report_without_reachable_frames(runs, browser, tmp_path):
    """--self-contained inlines the media; a missing dataset still gives masks-only overlays."""
    out = tmp_path / "one.html"
    res = cli("report", runs["a"], "-o", out, "--self-contained", "--data-root", tmp_path / "nowhere", "--no-progress")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "one_media").exists()
    html = out.read_text()
    assert 'src="data:video/mp4;base64,' in html and "masks shown without frames" in html
    got = check_page(browser, out, tmp_path / "one.png")
    assert len(got["media"]["videos"]) == 2 and got["media"]["images"] == []  # no GT, so no worst frames


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    res = cli("report", tmp_path / "missing-run", "-o", tmp_path / "r.html")
    assert res.exit_code == 1 and "missing-run" in res.output and "run.json" in res.output


def test_overlay_video_formats_decode(tmp_path):
    vid = make_video(frames=5, size=(50, 66), seed=4)  # odd-ish sizes: the writer crops to even
    img = ov.mark_frames(ov.render_overlay(vid.frames, vid.masks, vid.masks), [str(i) for i in range(5)], [1])
    assert img.shape == (5, 50, 66, 3) and (img[1, 0, 0] == ov.WORST_COLOUR).all() and not (img[0, 0, 0] == ov.WORST_COLOUR).all()
    for fmt in ("mp4", "webm"):
        if fmt not in ov.available_formats():
            continue
        path = ov.write_video(tmp_path / "v", img, fps=10, fmt=fmt)
        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 5 and frames[0].shape == (50, 66, 3)


def test_segment_frame_folder_with_gt(runs, tmp_path):
    folder = runs["root"] / "JPEGImages/480p/walker"
    res = cli("segment", folder, "-o", tmp_path / "out", "--gt", runs["root"] / "Annotations/480p/walker", *SMALL)
    assert res.exit_code == 0, res.output
    assert "8 frames of 128x96" in res.output and "J&F" in res.output and "overlay.mp4" in res.output
    pngs = sorted((tmp_path / "out/masks").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(8)]
    gt = runs["vids"]["walker"].masks
    ious = []
    for t, p in enumerate(pngs):
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.shape == (96, 128) and set(np.unique(m)) <= {0, 255}
        ious.append(((m > 0) & gt[t]).sum() / ((m > 0) | gt[t]).sum())
    assert np.mean(ious) > 0.7
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["frames"] == 8 and summary["j_mean"] == pytest.approx(np.mean(ious[1:-1]), abs=1e-6)
    with av.open(str(tmp_path / "out/overlay.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264" and sum(1 for _ in c.decode(video=0)) == 8


def test_segment_with_ike_and_finer_flow(runs, tmp_path):
    """``segment --method ike --flow-height``: the other method, with flow estimated above the working height."""
    folder = runs["root"] / "JPEGImages/480p/walker"
    res = cli("segment", folder, "-o", tmp_path / "out", "--method", "ike", "-p", "cycles=1", "--work-height", "48",
              "--flow-height", "96")
    assert res.exit_code == 0, res.output
    gt = runs["vids"]["walker"].masks
    masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) > 0 for p in sorted((tmp_path / "out/masks").glob("*.png"))]
    assert len(masks) == 8 and masks[0].shape == (96, 128)
    assert np.mean([(m & g).sum() / (m | g).sum() for m, g in zip(masks, gt)]) > 0.6
    res = cli("segment", folder, "-o", tmp_path / "o2", "--method", "no-such-method")
    assert res.exit_code == 2 and "no-such-method" in res.output
    res = cli("segment", folder, "-o", tmp_path / "o3", "--method", "ike", "-p", "features.background_layers=3")
    assert res.exit_code == 2 and "background_layers=3" in res.output and not (tmp_path / "o3").exists()


def test_segment_video_file_respects_max_frames(runs, tmp_path):
    vid = runs["vids"]["runner"]
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as c:  # written here with PyAV, as a user's camera file would be
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt, s.options = 128, 96, "yuv420p", {"crf": "12"}
        for f in vid.frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    res = cli("segment", clip, "-o", tmp_path / "out", "--max-frames", 5, *SMALL)
    assert res.exit_code == 0, res.output
    assert "(video, 25 fps): 5 frames of 128x96" in res.output and "raise --max-frames" in res.output
    assert len(list((tmp_path / "out/masks").glob("*.png"))) == 5
    with av.open(str(tmp_path / "out/overlay.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (96, 128, 3)
    m = cv2.imread(str(tmp_path / "out/masks/00002.png"), cv2.IMREAD_UNCHANGED) > 0
    g = vid.masks[2]
    assert (m & g).sum() / (m | g).sum() > 0.6


def test_segment_bad_inputs_name_the_path(tmp_path):
    res = cli("segment", tmp_path / "no-such-clip.mp4", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "no-such-clip.mp4" in res.output and "no such file or folder" in res.output
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    res = cli("segment", junk, "-o", tmp_path / "o")
    assert res.exit_code == 1 and "junk.mp4" in res.output and "cannot decode" in res.output
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    res = cli("segment", empty, "-o", tmp_path / "o")
    assert res.exit_code == 1 and "empty-folder" in res.output and "at least 2" in res.output


def test_report_of_a_run_on_s3(runs, tmp_path, s3_bucket, s3_options):
    """The same run copied to an S3 bucket (moto server on 127.0.0.1) reports the same way."""
    pafs = pytest.importorskip("pyarrow.fs")
    from vosbatch.report import build_report

    bucket, _ = s3_bucket
    fs = pafs.S3FileSystem(**s3_options)
    pafs.copy_files(str(runs["a"]), f"{bucket}/runs/run-a", destination_filesystem=fs)
    page = build_report(f"s3://{bucket}/runs/run-a", tmp_path / "s3", s3_options=s3_options)
    # the command line reaches the same store through the standard AWS variables (set by s3_bucket)
    run_cli("report", f"s3://{bucket}/runs/run-a", "-o", tmp_path / "cli", timeout=180)
    assert (tmp_path / "cli" / "index.html").read_text().count("data-sequence=") == 3
    html = page.read_text()
    assert html.count("data-sequence=") == 3 and html.count("<video") == 2 and f"s3://{bucket}/runs/run-a" in html
    assert len(list((tmp_path / "s3" / "media").glob("*.mp4"))) == 2
