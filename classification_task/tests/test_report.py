"""The evaluation's metrics.json content from synthetic scores, and its printed tables:
every line within 100 columns, the sections present, wide tables continued in blocks."""

import json
import math

import numpy as np
import pytest

from classification_task.evaluate import build_report, model_results
from classification_task.evaluation.report import MAX_WIDTH, evaluation_text, format_table, grid, score_text


def scores(seed, n, shift):
    """Labels, sources and p(nodule): LIDC images are all nodules, as in NoduLoCC."""
    rng = np.random.default_rng(seed)
    sources = np.where(rng.random(n) < 0.2, "lidc", "nih")
    y = np.where(sources == "lidc", 1, (rng.random(n) < 0.15).astype(int))
    p = np.clip(rng.normal(0.3 + shift * y, 0.2), 0, 1)
    return y, p, sources


def synthetic_report(beta=None, n_boot=50, zero_shot=True):
    y_val, p_val, _ = scores(0, 120, 0.3)
    y_test, p_test, sources = scores(1, 300, 0.3)
    results = {"fine_tuned": model_results(y_val, p_val, y_test, p_test, sources, beta, n_boot, seed=0)}
    if zero_shot:
        y_val0, p_val0, _ = scores(0, 120, 0.02)
        _, p_test0, _ = scores(1, 300, 0.02)
        results["zero_shot"] = model_results(y_val0, p_val0, y_test, p_test0, sources, beta, n_boot)
    best = {"step": 450, "metric": "pr_auc", "value": 0.41}
    return build_report(results, 120, y_test, beta, n_boot, best), y_test, p_test, sources


def assert_fits(text):
    too_wide = [line for line in text.splitlines() if len(line) > MAX_WIDTH]
    assert not too_wide, too_wide


def test_metrics_json_schema_is_nested_by_model_and_threshold():
    report, y_test, _, sources = synthetic_report()
    thresholds = ["threshold_0.5", "threshold_max_f1", "threshold_spec_0.99", "threshold_spec_0.995"]
    assert set(report["thresholds"]) == {"max_f1", "spec_0.99", "spec_0.995"}
    assert set(report["zero_shot_thresholds"]) == set(report["thresholds"])
    for model in ("fine_tuned", "zero_shot"):
        assert list(report["test"][model]) == thresholds
        assert list(report["ci_95"][model]) == thresholds
        assert list(report["by_source"][model]) == ["nih", "lidc"]
        assert list(report["by_source"][model]["lidc"]) == thresholds
    fine = report["test"]["fine_tuned"]
    assert fine["threshold_max_f1"]["threshold"] == report["thresholds"]["max_f1"]
    low, high = report["ci_95"]["fine_tuned"]["threshold_0.5"]["roc_auc"]
    assert low <= fine["threshold_0.5"]["roc_auc"] <= high
    assert report["n_test"] == 300 and report["n_test_positive"] == int(y_test.sum())
    assert report["best_checkpoint"]["step"] == 450 and report["n_bootstrap"] == 50
    # LIDC holds nodules only: no AUC within it; the NIH part still has one.
    lidc = report["by_source"]["fine_tuned"]["lidc"]["threshold_0.5"]
    assert math.isnan(lidc["roc_auc"]) and lidc["tp"] + lidc["fn"] == np.sum(sources == "lidc")
    assert 0 < report["by_source"]["fine_tuned"]["nih"]["threshold_0.5"]["roc_auc"] < 1
    json.dumps(report)  # plain types (NaN is written as null by write_json_atomic)


def test_every_printed_line_fits_100_columns_and_each_section_is_there():
    report, *_ = synthetic_report()
    text = evaluation_text(report)
    assert_fits(text)
    assert text.startswith("Test: 300 images")
    assert "Fine-tuned model on test" in text and "stratified bootstrap, 50 resamples" in text
    assert "Zero-shot vs fine-tuned" in text and "Test by image source" in text
    per_threshold = text.split("Fine-tuned model on test")[1].split("\n\n")[0]
    header = per_threshold.splitlines()[1].split()
    assert header == ["at", "0.5", "max_f1", "spec_0.99", "spec_0.995"]  # one block: it fits
    assert "\nROC-AUC 0." in text and "sensitivity at specificity 0.95:" in text
    comparison = text.split("Zero-shot vs fine-tuned")[1].split("\n\n")[0].splitlines()
    assert comparison[1].split() == ["model", "threshold", "precision", "recall", "specificity", "F1",
                                     "ROC-AUC", "PR-AUC"]
    assert [line.split()[0] for line in comparison[3:]] == ["zero-shot", "fine-tuned"] * 2
    by_source = text.split("Test by image source")[1].splitlines()
    rows = [line.split()[:2] for line in by_source if line.startswith(("fine-tuned", "zero-shot"))]
    assert rows == [[m, s] for m in ("fine-tuned", "zero-shot") for s in ("all", "NIH", "LIDC")]
    lidc_row = next(line for line in by_source if line.startswith("fine-tuned  LIDC"))
    assert lidc_row.split()[4:6] == ["n/a", "n/a"]


def test_f_beta_adds_a_row_a_column_and_a_tuned_threshold_and_still_fits():
    report, y_test, p_test, _ = synthetic_report(beta=2.0)
    assert report["beta"] == 2.0 and "max_f_beta" in report["thresholds"]
    fine = report["test"]["fine_tuned"]["threshold_0.5"]
    assert list(fine)[list(fine).index("f1") + 1] == "f_beta"
    assert "f_beta" in report["ci_95"]["fine_tuned"]["threshold_0.5"]
    text = evaluation_text(report)
    assert_fits(text)
    assert "\nF2 " in text and " F2 " in text  # a table row and a comparison column
    assert "max_f_beta" in text


def test_without_zero_shot_bootstrap_or_sources():
    report, *_ = synthetic_report(n_boot=0, zero_shot=False)
    assert report["ci_95"] == {"fine_tuned": {}} and "zero_shot_thresholds" not in report
    text = evaluation_text(report)
    assert_fits(text)
    assert "Zero-shot vs" not in text and "bootstrap" not in text and "[" not in text
    assert "Fine-tuned model on test" in text
    del report["by_source"]
    assert "by image source" not in evaluation_text(report)


def test_one_class_validation_leaves_only_threshold_0_5():
    y_test, p_test, sources = scores(1, 100, 0.3)
    results = {"fine_tuned": model_results(np.zeros(10), np.linspace(0, 1, 10), y_test, p_test, sources)}
    report = build_report(results, 10, y_test)
    assert report["thresholds"] == {} and list(report["test"]["fine_tuned"]) == ["threshold_0.5"]
    assert_fits(evaluation_text(report))


def test_a_table_too_wide_continues_in_a_second_block():
    columns = {f"column {i}": {"mcc": -0.0123, "tp": 3} for i in range(6)}
    ci = {name: {"mcc": (-0.0512, 0.0301)} for name in columns}
    text = format_table(columns, ci)
    assert_fits(text)
    blocks = text.split("\n\n")
    assert len(blocks) == 2 and all(block.startswith("metric") for block in blocks)
    assert sum(block.splitlines()[0].count("column") for block in blocks) == 6
    assert "-0.012 [-0.051, 0.030]" in text


def test_grid_left_aligns_label_columns_and_right_aligns_values():
    lines = grid(["model", "source", "AUC"], [["zero-shot", "NIH", "0.5"], ["fine-tuned", "all", "0.75"]],
                 n_keys=2).splitlines()
    assert lines[0] == "model       source   AUC"
    assert lines[1] == "-" * len(lines[0])
    assert lines[2] == "zero-shot   NIH      0.5"
    assert lines[3] == "fine-tuned  all     0.75"


def test_score_text_prints_sources_and_f_beta_within_100_columns():
    y, p, sources = scores(2, 200, 0.3)
    from classification_task.metrics import binary_metrics, bootstrap_ci, metrics_by_source, \
        sensitivity_at_specificity
    result = {"config": {"f_beta": 0.5}, "metrics": binary_metrics(y, p, 0.5, 0.5),
              "ci": bootstrap_ci(y, p, n_boot=30, beta=0.5), "by_source": metrics_by_source(y, p, sources, 0.5, 0.5),
              "sensitivity_at_specificity": sensitivity_at_specificity(y, p)}
    text = score_text(result)
    assert_fits(text)
    assert "F0.5" in text and "By image source, at threshold 0.5" in text
    assert [line.split()[0] for line in text.splitlines()[-3:]] == ["all", "NIH", "LIDC"]
    with pytest.raises(ValueError, match="column names"):
        format_table({"a": {"roc_auc": 0.5}}, ci={"roc_auc": (0.4, 0.6)})
