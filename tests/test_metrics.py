"""Tests for vosbatch.metrics (DAVIS 2016 J / F protocol) on hand-made masks with known answers."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from vosbatch.metrics import (
    METRIC_COLUMNS,
    SequenceScores,
    boundary_f,
    boundary_precision_recall,
    boundary_radius,
    disk,
    evaluate_sequence,
    format_table,
    jaccard,
    seg2bmap,
    statistics,
    summarise,
)

H, W = 480, 854  # DAVIS 480p frame


def rect(top: int, left: int, height: int, width: int, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + height, left : left + width] = True
    return m


# --------------------------------------------------------------------------------------------------
# J
# --------------------------------------------------------------------------------------------------
def test_jaccard_two_rectangles():
    a = rect(0, 0, 4, 4, shape=(10, 10))  # 16 px
    b = rect(2, 2, 4, 4, shape=(10, 10))  # 16 px, overlap 2x2 = 4
    assert jaccard(a, b) == pytest.approx(4 / 28)
    assert jaccard(a, a) == 1.0
    assert jaccard(a, rect(6, 6, 4, 4, shape=(10, 10))) == 0.0


def test_jaccard_empty_empty_is_one():
    z = np.zeros((7, 9), dtype=np.uint8)
    assert jaccard(z, z) == 1.0
    assert jaccard(z, rect(1, 1, 2, 2, shape=(7, 9))) == 0.0


def test_mask_encodings_agree():
    a = rect(10, 20, 50, 60)
    b = rect(30, 40, 50, 60)
    for conv in (lambda m: m, lambda m: m.astype(np.uint8), lambda m: m.astype(np.uint8) * 255,
                 lambda m: m.astype(np.float32)):
        assert jaccard(conv(a), conv(b)) == pytest.approx(jaccard(a, b))
        assert boundary_f(conv(a), conv(b)) == pytest.approx(boundary_f(a, b))
    # a trailing singleton channel is accepted
    assert jaccard(a[..., None], b[..., None]) == pytest.approx(jaccard(a, b))


def test_shape_mismatch_raises_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        jaccard(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        boundary_f(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="2-D"):
        jaccard(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)))


# --------------------------------------------------------------------------------------------------
# seg2bmap
# --------------------------------------------------------------------------------------------------
def test_seg2bmap_hand_drawn():
    mask = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0],
            [0, 1, 1, 0, 0, 1],
            [0, 0, 0, 0, 0, 1],
            [0, 0, 1, 1, 0, 1],
        ],
        dtype=np.uint8,
    )
    # Worked out by hand: a pixel is boundary if it differs from E, S or SE; last row: E only;
    # last column: S only; the bottom-right pixel never (although it is foreground here).
    expected = np.array(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 0, 1, 0, 1, 1],
            [1, 1, 1, 0, 1, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 1, 0, 1, 1, 0],
        ],
        dtype=bool,
    )
    out = seg2bmap(mask)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(seg2bmap(mask * 255), expected)
    np.testing.assert_array_equal(seg2bmap(mask.astype(bool)), expected)


def test_seg2bmap_rectangle_count_and_uniform_masks():
    # A filled h x w rectangle away from the border has 2(h + w) boundary pixels.
    m = rect(10, 20, 30, 40, shape=(100, 100))
    assert seg2bmap(m).sum() == 2 * (30 + 40)
    assert not seg2bmap(np.zeros((5, 5))).any()
    assert not seg2bmap(np.ones((5, 5))).any()  # a full mask has no boundary
    # single row / single column images: E-only / S-only rules
    np.testing.assert_array_equal(seg2bmap(np.array([[0, 1, 1, 0]])), [[1, 0, 1, 0]])
    np.testing.assert_array_equal(seg2bmap(np.array([[1], [0], [0]])), [[1], [0], [0]])


# --------------------------------------------------------------------------------------------------
# disk / radius
# --------------------------------------------------------------------------------------------------
def test_disk_radius_2_known_pattern():
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(disk(2), expected)
    # OpenCV's ellipse is a different shape: that is why it must not be used.
    assert not np.array_equal(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)), expected)
    np.testing.assert_array_equal(disk(0), [[1]])


def test_disk_radius_8_matches_definition():
    k = disk(8)
    assert k.shape == (17, 17)
    yy, xx = np.mgrid[-8:9, -8:9]
    np.testing.assert_array_equal(k, (xx**2 + yy**2 <= 64).astype(np.uint8))


def test_boundary_radius():
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.65)
    assert boundary_radius((480, 854), 3) == 3  # >= 1: pixels
    assert boundary_radius((100, 100), 0.01) == math.ceil(0.01 * math.hypot(100, 100))
    with pytest.raises(ValueError):
        boundary_radius((480, 854), 2.5)


# --------------------------------------------------------------------------------------------------
# F
# --------------------------------------------------------------------------------------------------
def test_boundary_f_identical_is_one():
    gt = rect(100, 200, 150, 120)
    assert boundary_f(gt, gt) == 1.0
    assert boundary_precision_recall(gt, gt) == (1.0, 1.0)


def test_boundary_f_small_shift_within_radius_is_one():
    gt = rect(100, 200, 150, 120)
    assert boundary_f(np.roll(gt, 3, axis=1), gt) == pytest.approx(1.0)


def test_boundary_f_shift_beyond_radius_is_zero():
    gt = rect(100, 100, 100, 100)
    pred = rect(100, 100 + 8 + 100 + 5, 100, 100)  # boundaries > 8 px apart everywhere
    assert boundary_precision_recall(pred, gt) == (0.0, 0.0)
    assert boundary_f(pred, gt) == 0.0


def test_boundary_f_shift_just_inside_and_outside_radius():
    # Two vertical edges: a column shifted by exactly r = 8 px is matched, by 9 px it is not.
    gt = rect(0, 0, H, 400)  # spans all rows: its boundary is column 399 only
    assert boundary_precision_recall(rect(0, 0, H, 408), gt) == (1.0, 1.0)
    assert boundary_precision_recall(rect(0, 0, H, 409), gt) == (0.0, 0.0)


def test_boundary_f_known_precision():
    gt = rect(100, 100, 100, 100)  # 400 boundary px
    pred = gt | rect(300, 600, 10, 10)  # + a far-away blob with 40 boundary px
    p, r = boundary_precision_recall(pred, gt)
    assert p == pytest.approx(400 / 440)
    assert r == 1.0
    assert boundary_f(pred, gt) == pytest.approx(20 / 21)


def test_boundary_f_edge_cases():
    gt = rect(100, 100, 100, 100)
    empty = np.zeros((H, W), dtype=bool)
    assert boundary_precision_recall(empty, gt) == (1.0, 0.0)  # prediction has no boundary
    assert boundary_precision_recall(gt, empty) == (0.0, 1.0)  # GT has no boundary
    assert boundary_precision_recall(empty, empty) == (1.0, 1.0)
    assert boundary_f(empty, gt) == 0.0
    assert boundary_f(gt, empty) == 0.0
    assert boundary_f(empty, empty) == 1.0
    full = np.ones((H, W), dtype=bool)  # full masks have no boundary either
    assert boundary_precision_recall(full, gt) == (1.0, 0.0)
    assert boundary_f(full, empty) == 1.0


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------
def test_statistics_known_vector():
    v = np.arange(10) / 10
    # ids = round(linspace(1, 10, 5)) - 1 = round([1, 3.25, 5.5, 7.75, 10]) - 1 = [0, 2, 5, 7, 9]
    # bin 0 = v[0:3] = (0, .1, .2) -> .1 ; bin 3 = v[7:10] = (.7, .8, .9) -> .8
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(0.45)
    assert recall == pytest.approx(0.4)  # .6 .7 .8 .9 ; .5 is not > .5
    assert decay == pytest.approx(0.1 - 0.8)


def test_statistics_halves_round_up():
    # n = 7: linspace(1, 7, 5) = [1, 2.5, 4, 5.5, 7]; halves round up -> ids [0, 2, 3, 5, 6]
    # (numpy's round-half-to-even would give [0, 1, 3, 5, 6]).
    v = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(0.7)
    assert recall == pytest.approx(5 / 7)
    assert decay == pytest.approx(0.9 - 0.45)  # bin0 = v[0:3], bin3 = v[5:7]


def test_statistics_long_sequence_no_uint8_overflow():
    # n = 300: ids = [0, 75, 150, 224, 299]; a uint8 cast would wrap 299 -> 43 (empty last bin).
    v = np.zeros(300)
    v[:76] = 1.0
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(76 / 300)
    assert recall == pytest.approx(76 / 300)
    assert decay == pytest.approx(1.0)


def test_statistics_single_value_and_empty():
    assert statistics(np.array([0.7])) == pytest.approx((0.7, 1.0, 0.0))
    with pytest.raises(ValueError):
        statistics(np.array([]))


# --------------------------------------------------------------------------------------------------
# sequences / dataset
# --------------------------------------------------------------------------------------------------
def _bad_ends_sequence(n: int = 5):
    gt = [rect(100 + 5 * t, 100, 100, 100) for t in range(n)]
    preds = [g.copy() for g in gt]
    preds[0] = np.zeros_like(gt[0])  # first and last frame totally wrong
    preds[-1] = np.zeros_like(gt[0])
    return preds, gt


def test_evaluate_sequence_excludes_first_and_last():
    preds, gts = _bad_ends_sequence(5)
    s = evaluate_sequence(preds, gts)
    assert isinstance(s, SequenceScores)
    assert s.frames == 3 and len(s.j_per_frame) == 3 and len(s.f_per_frame) == 3
    assert (s.j_mean, s.j_recall, s.j_decay) == (1.0, 1.0, 0.0)
    assert (s.f_mean, s.f_recall, s.f_decay) == (1.0, 1.0, 0.0)

    s_all = evaluate_sequence(preds, gts, exclude_first_last=False)
    assert s_all.frames == 5
    assert s_all.j_mean == pytest.approx(3 / 5)
    assert s_all.f_mean == pytest.approx(3 / 5)
    assert s_all.j_recall == pytest.approx(3 / 5)
    np.testing.assert_allclose(s_all.j_per_frame, [0, 1, 1, 1, 0])


def test_evaluate_sequence_short_sequences_fall_back_to_all_frames():
    preds, gts = _bad_ends_sequence(2)
    s = evaluate_sequence(preds, gts)
    assert s.frames == 2 and s.j_mean == 0.0
    s3 = evaluate_sequence(*_bad_ends_sequence(3))
    assert s3.frames == 1 and s3.j_mean == 1.0


def test_evaluate_sequence_errors():
    preds, gts = _bad_ends_sequence(5)
    with pytest.raises(ValueError, match="4 predicted frames but 5"):
        evaluate_sequence(preds[:4], gts)
    preds[2] = preds[2][:-1]
    with pytest.raises(ValueError, match=r"frame 2.*\(479, 854\).*\(480, 854\)"):
        evaluate_sequence(preds, gts)
    with pytest.raises(ValueError):
        evaluate_sequence([], [])


def test_summarise_and_format_table():
    rows = [
        {"sequence": "bear", "j_mean": 0.8, "j_recall": 1.0, "j_decay": 0.1,
         "f_mean": 0.6, "f_recall": 0.5, "f_decay": 0.2},
        {"sequence": "blackswan", "j_mean": 0.4, "j_recall": 0.0, "j_decay": -0.1,
         "f_mean": 0.2, "f_recall": 0.0, "f_decay": 0.0},
    ]
    s = summarise(rows)
    assert set(s) == set(METRIC_COLUMNS) | {"jf_mean"}
    assert s["j_mean"] == pytest.approx(0.6)
    assert s["f_mean"] == pytest.approx(0.4)
    assert s["j_decay"] == pytest.approx(0.0)
    assert s["jf_mean"] == pytest.approx(0.5)

    table = format_table(rows)
    lines = table.splitlines()
    for head in ("sequence", "J mean", "J recall", "J decay", "F mean", "F recall", "F decay", "J&F"):
        assert head in lines[0]
    assert lines[-1].split() == ["mean", "0.600", "0.500", "0.000", "0.400", "0.250", "0.100", "0.500"]
    bear = next(line for line in lines if line.startswith("bear"))
    assert bear.split()[-1] == "0.700"  # (0.8 + 0.6) / 2
    with pytest.raises(ValueError):
        summarise([])

    # SequenceScores rows plug straight in
    row = evaluate_sequence(*_bad_ends_sequence(5)).as_row("x")
    assert summarise([row])["jf_mean"] == 1.0


# --------------------------------------------------------------------------------------------------
# Cross-check against an independent, straightforward re-implementation of the reference
# --------------------------------------------------------------------------------------------------
def _ref_seg2bmap(seg):
    """Reference-style boundary map: shifted copies, then last-row/column overrides."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _ref_disk(r):
    r = int(r)
    k = np.zeros((2 * r + 1, 2 * r + 1), dtype=np.uint8)
    for y in range(-r, r + 1):
        for x in range(-r, r + 1):
            if x * x + y * y <= r * r:
                k[y + r, x + r] = 1
    return k


def _ref_dilate(b, kernel):
    """Binary dilation by looping over the kernel's offsets (zero padding outside the image)."""
    r = kernel.shape[0] // 2
    h, w = b.shape
    padded = np.zeros((h + 2 * r, w + 2 * r), dtype=bool)
    padded[r : r + h, r : r + w] = b
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if kernel[dy + r, dx + r]:
                out |= padded[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def _ref_f(pred, gt, bound_th=0.008, dilate=_ref_dilate, make_disk=_ref_disk):
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2))
    fb, gb = _ref_seg2bmap(pred), _ref_seg2bmap(gt)
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        p, rc = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1.0, 1.0
    else:
        k = make_disk(r)
        p = (fb & dilate(gb, k)).sum() / n_fg
        rc = (gb & dilate(fb, k)).sum() / n_gt
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def _ref_j(pred, gt):
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = (pred | gt).sum()
    return 1.0 if union == 0 else (pred & gt).sum() / union


def _ref_stats(v):
    n = len(v)
    ids = [int(np.round(1 + i * (n - 1) / 4 + 1e-10)) - 1 for i in range(5)]
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
    return (
        sum(v) / n,
        sum(1 for x in v if x > 0.5) / n,
        sum(bins[0]) / len(bins[0]) - sum(bins[3]) / len(bins[3]),
    )


def _blobs(rng, shape=(H, W), sigma=25.0, thresh=0.6):
    noise = rng.random(shape).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-12)
    return smooth > thresh


def _random_pair(rng):
    gt = _blobs(rng)
    kind = rng.integers(0, 5)
    if kind == 0:  # shifted
        pred = np.roll(gt, (int(rng.integers(-15, 16)), int(rng.integers(-15, 16))), axis=(0, 1))
    elif kind == 1:  # grown / shrunk
        k = cv2.getStructuringElement(cv2.MORPH_RECT, (int(rng.integers(3, 15)),) * 2)
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        pred = op(gt.astype(np.uint8), k).astype(bool)
    elif kind == 2:  # unrelated blobs
        pred = _blobs(rng, thresh=0.55)
    elif kind == 3:  # gt with salt noise and a missing part
        pred = gt ^ (rng.random(gt.shape) < 0.002)
        pred[: H // 3] = False
    else:  # degenerate: empty prediction, or empty GT
        pred = np.zeros_like(gt) if rng.random() < 0.5 else gt
        if pred is gt:
            gt = np.zeros_like(gt)
    return pred, gt


def test_cross_check_against_reference_reimplementation():
    rng = np.random.default_rng(2016)
    pairs = [_random_pair(rng) for _ in range(12)]
    j_ours, f_ours, j_ref, f_ref = [], [], [], []
    for pred, gt in pairs:
        j_ours.append(jaccard(pred.astype(np.uint8) * 255, gt))
        f_ours.append(boundary_f(pred, gt.astype(np.uint8)))
        j_ref.append(_ref_j(pred, gt))
        f_ref.append(_ref_f(pred, gt))
        np.testing.assert_array_equal(seg2bmap(pred), _ref_seg2bmap(pred))
    np.testing.assert_allclose(j_ours, j_ref, atol=1e-6)
    np.testing.assert_allclose(f_ours, f_ref, atol=1e-6)
    assert len({round(f, 3) for f in f_ref}) > 4  # non-trivial, varied F values occur

    # whole-sequence statistics
    s = evaluate_sequence([p for p, _ in pairs], [g for _, g in pairs])
    ref_j = _ref_stats(j_ref[1:-1])
    ref_f = _ref_stats(f_ref[1:-1])
    np.testing.assert_allclose([s.j_mean, s.j_recall, s.j_decay], ref_j, atol=1e-6)
    np.testing.assert_allclose([s.f_mean, s.f_recall, s.f_decay], ref_f, atol=1e-6)


def test_cross_check_with_scikit_image_if_available():
    morph = pytest.importorskip("skimage.morphology")
    for r in (1, 2, 5, 8, 12):
        np.testing.assert_array_equal(disk(r), morph.disk(r).astype(np.uint8))
    rng = np.random.default_rng(7)
    for _ in range(4):
        pred, gt = _random_pair(rng)
        ref = _ref_f(pred, gt, dilate=lambda b, k: morph.binary_dilation(b, k.astype(bool)),
                     make_disk=lambda r: morph.disk(r))
        assert boundary_f(pred, gt) == pytest.approx(ref, abs=1e-6)
