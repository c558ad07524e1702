"""Pure localization metrics: matching against exhaustive search, hand-computed examples."""

import math

import numpy as np
import pytest
from PIL import Image

from localization_task.metrics import (
    count_accuracy, detection_metrics, froc, match_points, precision_recall_f1, radial_error_stats,
)
from localization_task.evaluation.overlay import draw_overlay, to_display_uint8


# ------------------------------------------------------------ matching is exact

def exhaustive_best(dist: np.ndarray, thr: float) -> tuple[int, float, int]:
    """(pairs, total distance, number of optimal matchings) over all partial matchings."""
    m, n = dist.shape
    best = [0, 0.0, 0]

    def visit(i, used, k, total):
        if i == m:
            if k > best[0] or (k == best[0] and total < best[1] - 1e-9):
                best[:] = [k, total, 1]
            elif k == best[0] and abs(total - best[1]) <= 1e-9:
                best[2] += 1
            return
        visit(i + 1, used, k, total)
        for j in range(n):
            if not used >> j & 1 and dist[i, j] <= thr:
                visit(i + 1, used | 1 << j, k + 1, total + dist[i, j])

    visit(0, 0, 0, 0.0)
    return best[0], best[1], best[2]


def check_against_exhaustive(pred, gt, thr) -> tuple[bool, bool]:
    dist = np.hypot(pred[:, None, 0] - gt[None, :, 0], pred[:, None, 1] - gt[None, :, 1])
    k, total, n_optimal = exhaustive_best(dist, thr)
    m = match_points(pred, gt, thr)
    assert len(set(m["pred_idx"])) == len(m["pred_idx"]) and len(set(m["gt_idx"])) == len(m["gt_idx"])
    assert np.all(m["dist_px"] <= thr)
    np.testing.assert_array_equal(m["dist_px"], dist[m["pred_idx"], m["gt_idx"]])
    assert len(m["pred_idx"]) == k
    assert m["dist_px"].sum() == pytest.approx(total, abs=1e-9)
    return n_optimal > 1, bool(np.any(dist == thr))


def test_matching_equals_exhaustive_search_on_integer_grid():
    """Integer points on a small grid: many ties and distances exactly at the threshold (3-4-5)."""
    rng = np.random.default_rng(0)
    n_ties = n_at_threshold = 0
    for _ in range(3000):
        m, n = rng.integers(0, 6, size=2)
        pred, gt = rng.integers(0, 6, size=(m, 2)).astype(float), rng.integers(0, 6, size=(n, 2)).astype(float)
        thr = float(rng.choice([0, 1, 2, 2.5, 3, 4, 5, 6, 10]))
        tie, at_thr = check_against_exhaustive(pred, gt, thr)
        n_ties += tie
        n_at_threshold += at_thr
    # the hard cases were really exercised
    assert n_ties > 300 and n_at_threshold > 300, (n_ties, n_at_threshold)


def test_matching_equals_exhaustive_search_on_continuous_points():
    rng = np.random.default_rng(1)
    for _ in range(1000):
        m, n = rng.integers(1, 6, size=2)
        check_against_exhaustive(rng.uniform(0, 100, (m, 2)), rng.uniform(0, 100, (n, 2)), rng.uniform(5, 60))


def test_distance_exactly_at_threshold_is_admissible():
    assert len(match_points([[0, 0]], [[3, 4]], 5.0)["pred_idx"]) == 1
    assert len(match_points([[0, 0]], [[3, 4]], 4.999)["pred_idx"]) == 0


def test_more_pairs_beat_shorter_total_distance():
    # pred A is 1 px from gt a, but the only 2-pair matching (A-b 2 px, B-a 1.41 px) wins
    pred, gt = np.array([[0.0, 0], [2, 1]]), np.array([[1.0, 0], [-2, 0]])
    m = match_points(pred, gt, 2.5)
    assert sorted(zip(m["pred_idx"].tolist(), m["gt_idx"].tolist())) == [(0, 1), (1, 0)]
    assert m["dist_px"].sum() == pytest.approx(2 + math.sqrt(2))


def test_empty_inputs_match_nothing():
    for pred, gt in [([], [[1, 1]]), ([[1, 1]], []), ([], [])]:
        assert len(match_points(pred, gt, 10.0)["pred_idx"]) == 0


# --------------------------------------------------------- hand-computed metrics

def test_seed_counts_reproduce_reported_scores():
    """The reference CheXagent-2 run: 179 GT points, 53 predictions; tight TP 10 FP 43 FN 169,
    tolerant TP 28 FP 25 FN 151."""
    reported = [((10, 43, 169), (0.189, 0.056, 0.086)), ((28, 25, 151), (0.528, 0.156, 0.241))]
    for (tp, fp, fn), (p, r, f1) in reported:
        assert tp + fn == 179 and tp + fp == 53
        got = precision_recall_f1(tp, fp, fn)
        assert (round(got["precision"], 3), round(got["recall"], 3), round(got["f1"], 3)) == (p, r, f1)
        m = detection_metrics([{"pred_idx": np.arange(tp), "dist_px": np.ones(tp)}], [179], [53], [1.0])
        assert m["pck"] == pytest.approx(tp / 179) and m["recall"] == pytest.approx(tp / 179)


def test_precision_recall_f1_edge_cases():
    assert np.isnan(precision_recall_f1(0, 0, 3)["precision"])  # no predictions: precision undefined
    assert precision_recall_f1(0, 0, 3)["recall"] == 0 and precision_recall_f1(0, 0, 3)["f1"] == 0
    assert np.isnan(precision_recall_f1(0, 2, 0)["recall"])  # no GT: recall undefined
    assert precision_recall_f1(0, 2, 0)["precision"] == 0 and precision_recall_f1(0, 2, 0)["f1"] == 0
    assert all(np.isnan(v) for v in precision_recall_f1(0, 0, 0).values())
    assert precision_recall_f1(2, 2, 1) == {"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7}


# Four images: 300x400 (diag 500), 600x800 (diag 1000), 300x400, and one with nothing.
GT = [np.array([[100.0, 100], [200, 200]]), np.array([[300.0, 300]]), np.zeros((0, 2)), np.zeros((0, 2))]
PRED = [np.array([[106.0, 108], [200, 220], [50, 350]]), np.zeros((0, 2)), np.array([[10.0, 10]]), np.zeros((0, 2))]
DIAG = np.array([500.0, 1000, 500, math.nan])


def metrics_at(frac, spacing=None):
    matches = [match_points(p, g, frac * d) for p, g, d in zip(PRED, GT, DIAG)]
    return detection_metrics(matches, [len(g) for g in GT], [len(p) for p in PRED], DIAG, spacing)


def test_hand_example_tight():
    m = metrics_at(0.02, spacing=0.5)  # thresholds 10 px / 20 px; the 10 px pair sits exactly at it
    assert (m["tp"], m["fp"], m["fn"]) == (1, 3, 2)
    assert (m["precision"], m["recall"], m["f1"], m["pck"]) == pytest.approx((1 / 4, 1 / 3, 2 / 7, 1 / 3))
    # per image P/R/F1: (1/3, 1/2, 0.4), (nan, 0, 0), (0, nan, 0), (nan, nan, nan)
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((1 / 6, 1 / 4, 0.4 / 3))
    assert (m["mre_px"], m["mre_std_px"], m["median_re_px"]) == pytest.approx((10, 0, 10))
    assert (m["mre_frac"], m["median_re_frac"], m["mre_mm"], m["median_re_mm"]) == pytest.approx((0.02, 0.02, 5, 5))


def test_hand_example_tolerant():
    m = metrics_at(0.05, spacing=0.5)  # 25 px / 50 px
    assert (m["tp"], m["fp"], m["fn"], m["n_matched"]) == (2, 2, 1, 2)
    assert (m["precision"], m["recall"], m["f1"], m["pck"]) == pytest.approx((0.5, 2 / 3, 4 / 7, 2 / 3))
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((1 / 3, 1 / 2, 0.8 / 3))
    assert (m["mre_px"], m["mre_std_px"], m["median_re_px"]) == pytest.approx((15, 5, 15))
    assert (m["mre_frac"], m["mre_std_frac"], m["median_re_frac"]) == pytest.approx((0.03, 0.01, 0.03))
    assert (m["mre_mm"], m["mre_std_mm"], m["median_re_mm"]) == pytest.approx((7.5, 2.5, 7.5))
    assert "mre_mm" not in metrics_at(0.05)


def test_no_matches_give_nan_errors_and_no_gt_gives_nan_recall():
    m = detection_metrics([match_points([[0, 0]], [], 10)], [0], [1], [100.0])
    assert (m["tp"], m["fp"], m["fn"], m["precision"], m["f1"]) == (0, 1, 0, 0, 0)
    assert np.isnan(m["recall"]) and np.isnan(m["pck"]) and np.isnan(m["mre_px"]) and np.isnan(m["median_re_frac"])
    assert all(np.isnan(v) for v in radial_error_stats([], "px").values())


def test_count_accuracy_counts_list_negatives_as_correct():
    n_gt, n_pred = [len(g) for g in GT], [len(p) for p in PRED]
    assert count_accuracy(n_gt, n_pred) == {
        "count_accuracy": 0.25, "n_count_correct": 1, "n_count_images": 4,
        "count_accuracy_with_nodules": 0.0, "n_count_correct_with_nodules": 0, "n_count_images_with_nodules": 2,
        "count_accuracy_without_nodules": 0.5, "n_count_correct_without_nodules": 1,
        "n_count_images_without_nodules": 2,
    }
    assert count_accuracy(n_gt[:3], n_pred[:3])["count_accuracy"] == 0
    assert count_accuracy([2, 1, 0], [2, 3, 0])["count_accuracy"] == pytest.approx(2 / 3)
    assert all(np.isnan(count_accuracy([], [])[k]) for k in ("count_accuracy", "count_accuracy_with_nodules"))


def test_count_accuracy_three_ways_expose_a_model_that_predicts_nothing():
    n_gt = [0] * 8 + [1, 2]
    silent = count_accuracy(n_gt, [0] * 10)
    assert silent["count_accuracy"] == 0.8  # flattering: every negative is right
    assert silent["count_accuracy_with_nodules"] == 0 and silent["n_count_images_with_nodules"] == 2
    assert silent["count_accuracy_without_nodules"] == 1 and silent["n_count_correct_without_nodules"] == 8
    only_positives = count_accuracy([1, 2], [1, 1])
    assert only_positives["count_accuracy_with_nodules"] == 0.5
    assert np.isnan(only_positives["count_accuracy_without_nodules"])
    assert only_positives["n_count_images_without_nodules"] == 0


def test_mm_errors_use_each_images_spacing_and_skip_images_without_one():
    matches = [match_points(p, g, frac * d) for p, g, d, frac in zip(PRED, GT, DIAG, [0.05] * 4)]
    n_gt, n_pred = [len(g) for g in GT], [len(p) for p in PRED]
    # image 0 holds both tolerant pairs (10 px and 20 px)
    m = detection_metrics(matches, n_gt, n_pred, DIAG, np.array([0.2, 0.5, 0.5, np.nan]))
    assert m["n_matched_mm"] == 2 and (m["mre_mm"], m["median_re_mm"]) == pytest.approx((3, 3))
    m = detection_metrics(matches, n_gt, n_pred, DIAG, np.array([np.nan, 0.5, 0.5, 0.5]))
    assert m["n_matched_mm"] == 0 and m["n_matched"] == 2 and np.isnan(m["mre_mm"])
    assert detection_metrics(matches, n_gt, n_pred, DIAG, 0.5)["n_matched_mm"] == 2


def test_matches_record_their_radius():
    assert match_points([[0, 0]], [[3, 4]], 5.0)["radius_px"] == 5.0
    assert match_points([], [[3, 4]], 7.5)["radius_px"] == 7.5


# ------------------------------------------------------------------------- FROC

FROC_GT = [np.array([[0.0, 0]]), np.array([[100.0, 100]])]
FROC_PRED = [np.array([[1.0, 0], [50, 50]]), np.array([[60.0, 60], [100, 102]])]
FROC_THR = [10.0, 10.0]


def test_froc_hand_example():
    # cut-offs 0.9 / 0.8 / 0.7 / 0.6 -> (FP/image, sensitivity) = (0, .5), (.5, .5), (1, .5), (1, 1)
    f = froc(FROC_GT, FROC_PRED, [np.array([0.9, 0.8]), np.array([0.7, 0.6])], FROC_THR)
    assert f["defined"] and f["reason"] is None
    assert f["sensitivity"] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert f["cpm"] == pytest.approx(5.5 / 7)
    points = [(p["fp_per_image"], p["sensitivity"]) for p in f["curve"]]
    assert points == [(0, 0), (0, .5), (.5, .5), (1, .5), (1, 1)]
    assert f["operating_point"] == {"fp_per_image": 1.0, "sensitivity": 1.0}


def test_froc_undefined_cases_keep_the_operating_point():
    same = froc(FROC_GT, FROC_PRED, [np.array([1.0, 1.0]), np.array([1.0, 1.0])], FROC_THR)
    assert not same["defined"] and "same confidence" in same["reason"] and same["cpm"] is None
    assert same["operating_point"] == {"fp_per_image": 1.0, "sensitivity": 1.0}
    missing = froc(FROC_GT, FROC_PRED, [np.array([0.9, np.nan]), np.array([0.7, 0.6])], FROC_THR)
    assert not missing["defined"] and "no confidence" in missing["reason"]
    empty = froc(FROC_GT, [np.zeros((0, 2))] * 2, [np.zeros(0)] * 2, FROC_THR)
    assert not empty["defined"] and empty["reason"] == "no predictions" and empty["operating_point"] is None


# --------------------------------------------------------------------- overlays

def test_overlay_stretches_16_bit_and_draws_points():
    pixels = np.linspace(1000, 1400, 128 * 96, dtype=np.float64).reshape(96, 128).astype(np.uint16)
    image = Image.fromarray(pixels)
    assert image.mode.startswith("I")
    grey = np.asarray(to_display_uint8(image))
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    canvas = draw_overlay(image, [[60, 60]], [[90, 70]], [0], [0], {"tight": 3.0, "tolerant": 8.0}, "x.png")
    assert canvas.mode == "RGB" and canvas.size == (128, 96)
    r, g, b = canvas.getpixel((60, 60))
    assert g > 150 and r < 100  # a green ground-truth dot


def test_overlay_writes_each_prediction_confidence_beside_its_cross():
    image = Image.fromarray(np.full((96, 128), 60, np.uint8))
    plain = np.asarray(draw_overlay(image, [], [[40, 40]], [], [], {}))
    labelled = np.asarray(draw_overlay(image, [], [[40, 40]], [], [], {}, pred_conf=[0.87]))
    changed_x = np.flatnonzero((plain != labelled).any(axis=(0, 2)))
    assert len(changed_x) and changed_x.min() > 40  # text to the right of the cross, nothing else moved
    unknown = np.asarray(draw_overlay(image, [], [[40, 40]], [], [], {}, pred_conf=[float("nan")]))
    np.testing.assert_array_equal(unknown, plain)


def test_froc_curve_equals_rematching_everything_at_each_cut_off():
    rng = np.random.default_rng(2)
    gt = [rng.uniform(0, 50, (rng.integers(0, 4), 2)) for _ in range(6)]
    pred = [rng.uniform(0, 50, (rng.integers(0, 5), 2)) for _ in range(6)]
    conf = [rng.integers(0, 5, len(p)) / 4 for p in pred]  # repeated confidences across images
    thr = np.full(6, 12.0)
    f = froc(gt, pred, conf, thr)
    n_gt = sum(len(g) for g in gt)
    for point in f["curve"][1:]:
        keep = [c >= point["confidence"] for c in conf]
        tp = sum(len(match_points(p[k], g, t)["pred_idx"]) for p, k, g, t in zip(pred, keep, gt, thr))
        fp = sum(int(k.sum()) for k in keep) - tp
        assert (point["fp_per_image"], point["sensitivity"]) == pytest.approx((fp / 6, tp / n_gt))
    assert len(f["curve"]) == len(np.unique(np.concatenate(conf))) + 1
