"""The printed report, from EvalImages built in code as a trainer would: content and width."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from localization_task.metrics import (
    EvalConfig, EvalImages, evaluate, format_table, per_image_table, write_evaluation,
)
from localization_task.evaluation.report import MAX_WIDTH, grid

# The hand example of test_metrics.py: 300x400 (diag 500), 600x800 (diag 1000), 300x400, nothing.
GT = [np.array([[100.0, 100], [200, 200]]), np.array([[300.0, 300]]), np.zeros((0, 2)), np.zeros((0, 2))]
PRED = [np.array([[106.0, 108], [200, 220], [50, 350]]), np.zeros((0, 2)), np.array([[10.0, 10]]),
        np.zeros((0, 2))]
CONF = [np.array([0.9, 0.8, 0.3]), np.zeros(0), np.array([0.5]), np.zeros(0)]


def hand_images(spacing_mm=None) -> EvalImages:
    return EvalImages(["a.png", "b.png", "c.png", "d.png"], GT, PRED, CONF,
                      np.array([300.0, 600, 300, math.nan]), np.array([400.0, 800, 400, math.nan]),
                      spacing_mm=spacing_mm)


def report(cfg=None, images=None) -> tuple[dict, str]:
    cfg = cfg or EvalConfig()
    results, _ = evaluate(images or hand_images(), cfg)
    return results, format_table(results, list(cfg.thresholds))


def row(text: str, label: str) -> list[str]:
    """The cells of the table row with this label, split on two or more spaces."""
    line = next(ln for ln in text.splitlines() if ln.startswith(label + "  "))
    return [cell for cell in line[len(label):].split("  ") if cell.strip()]


def test_table_shows_mean_plus_minus_std_radius_range_and_counts():
    results, text = report(EvalConfig(pixel_spacing_mm=0.5))
    assert text.splitlines()[0] == "4 images: 2 with nodules (3 points), 2 with predictions (4 points)"
    assert [c.strip() for c in row(text, "radius (px)")] == ["10.0-20.0", "25.0-50.0"]
    assert [c.strip() for c in row(text, "TP / FP / FN")] == ["1 / 3 / 2", "2 / 2 / 1"]
    assert [c.strip() for c in row(text, "radial error (px), mean ± std")] == ["10.0 ± 0.0", "15.0 ± 5.0"]
    assert [c.strip() for c in row(text, "radial error (frac), mean ± std")] == ["0.0200 ± 0.0000",
                                                                                 "0.0300 ± 0.0100"]
    assert [c.strip() for c in row(text, "radial error (mm), mean ± std")] == ["5.0 ± 0.0", "7.5 ± 2.5"]
    assert (results["tolerant"]["radius_px_min"], results["tolerant"]["radius_px_max"]) == (25, 50)
    assert "Errors in mm cover only" not in text  # one spacing for every image


def test_radius_is_one_number_when_every_image_has_the_same_size():
    images = hand_images()
    images.width_px, images.height_px = np.array([300.0] * 3 + [math.nan]), np.array([400.0] * 3 + [math.nan])
    _, text = report(images=images)
    assert [c.strip() for c in row(text, "radius (px)")] == ["10.0", "25.0"]


def test_footnote_names_the_images_each_macro_average_covers():
    results, text = report()
    # per image: precision defined on a, c (predictions); recall on a, b (GT points); F1 on a, b, c
    assert (results["n_images_with_pred"], results["n_images_with_gt"],
            results["n_images_with_gt_or_pred"]) == (2, 2, 3)
    note = " ".join(ln.strip() for ln in text.split("* macro:")[1].splitlines()[:2])
    assert "precision over the 2 images with at least one prediction" in note
    assert "recall over the 2 with at least one ground-truth point" in note
    assert "F1 over the 3 with either" in note
    assert [c.strip() for c in row(text, "macro precision *")] == ["0.167", "0.333"]


def test_count_accuracy_three_ways_in_the_table():
    _, text = report()
    assert [c.strip() for c in row(text, "all images")] == ["0.250", "1/4"]
    assert [c.strip() for c in row(text, "images with nodules")] == ["0.000", "0/2"]
    assert [c.strip() for c in row(text, "images without nodules")] == ["0.500", "1/2"]


def test_froc_is_a_two_row_table_then_cpm():
    results, text = report()
    assert [c.strip() for c in row(text, "FP per image")] == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert [c.strip() for c in row(text, "sensitivity")] == ["0.667"] * 7
    assert "CPM (their mean) 0.667" in text and results["froc"]["cpm"] == pytest.approx(2 / 3)


def test_mm_note_when_only_some_images_have_a_spacing():
    results, text = report(images=hand_images(np.array([0.5, math.nan, math.nan, math.nan])))
    assert results["n_images_with_spacing"] == 1 and results["tolerant"]["n_matched_mm"] == 2
    assert "Errors in mm cover only the matched pairs on the 1 of 4 images" in text
    # the single value fills in the images the per-image spacings leave out
    results, _ = report(EvalConfig(pixel_spacing_mm=0.25), hand_images(np.array([0.5, np.nan, np.nan, np.nan])))
    assert results["n_images_with_spacing"] == 4 and results["tolerant"]["mre_mm"] == pytest.approx(7.5)


def test_every_line_fits_100_columns_with_many_thresholds_and_an_undefined_froc():
    thresholds = {f"threshold_{k}": 0.01 * (k + 1) for k in range(9)}
    images = hand_images(np.array([0.5, 0.7, math.nan, math.nan]))
    images.pred_conf = [np.ones(len(p)) for p in PRED]  # all equal: FROC undefined, long reason
    results, text = report(EvalConfig(thresholds=thresholds, pixel_spacing_mm=0.5), images)
    assert not results["froc"]["defined"]
    assert "FROC not defined at threshold_8" in text and "Single operating point" in text
    assert max(len(ln) for ln in text.splitlines()) <= MAX_WIDTH
    shown = [c.strip() for ln in text.splitlines() if ln.startswith("threshold  ") for c in ln.split()[1:]]
    assert shown == list(thresholds)  # split into blocks, every threshold once, in order


def test_grid_keeps_columns_that_fit_side_by_side():
    lines = grid("x", ["a", "b"], [("row", ["1", "2"])])
    assert lines == ["x    a  b", "row  1  2"]


def test_write_evaluation_from_code_with_extra_keys(tmp_path):
    cfg, images = EvalConfig(), hand_images()
    results, matches = evaluate(images, cfg)
    summary_path, csv_path = write_evaluation(tmp_path / "eval", images, cfg, results, matches,
                                              {"checkpoint": "checkpoint-100", "split": "val"})
    summary = json.loads(summary_path.read_text())
    assert summary["checkpoint"] == "checkpoint-100" and summary["count_accuracy_with_nodules"] == 0
    assert summary["config"]["predictions"] is None and "git_commit" in summary
    table = pd.read_csv(csv_path)
    assert table["file_name"].tolist() == ["a.png", "b.png", "c.png", "d.png"]
    assert list(table.columns) == list(per_image_table(images, matches).columns)
    with pytest.raises(ValueError, match="would overwrite"):
        write_evaluation(tmp_path / "other", images, cfg, results, matches, {"tight": 1})
    assert not (tmp_path / "other").exists()


def test_per_image_table_gives_radius_and_median_error_per_threshold():
    cfg, images = EvalConfig(), hand_images()
    results, matches = evaluate(images, cfg)
    table = per_image_table(images, matches)
    assert table["tight_radius_px"].tolist()[:3] == pytest.approx([10, 20, 10])
    assert np.isnan(table["tight_radius_px"].iloc[3])  # no point, size unknown
    assert table["tolerant_radius_px"].tolist()[:3] == pytest.approx([25, 50, 25])
    assert table["tolerant_median_re_px"].iloc[0] == pytest.approx(15)
    assert table["tolerant_median_re_px"].iloc[1:].isna().all()
