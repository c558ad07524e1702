"""Metrics against scikit-learn on seeded random data, hand-checked edge cases, and the CLI."""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from classification_task.metrics import (
    COUNT_METRICS,
    FLOAT_METRICS,
    ScoreConfig,
    _resample_metrics,
    binary_metrics,
    bootstrap_ci,
    main,
    select_thresholds,
    sensitivity_at_specificity,
)
from classification_task.evaluation.report import format_table

REPO_ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-9


def random_scores(seed: int, n: int = 600, prevalence: float = 0.1):
    """Labels plus informative scores rounded to 2 decimals, so ties occur."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = np.clip(rng.normal(0.35 + 0.25 * y, 0.2), 0.0, 1.0).round(2)
    return y, p


def sklearn_reference(y, p, threshold):
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "sensitivity": skm.recall_score(y, pred, zero_division=0),
        "specificity": skm.recall_score(1 - y, 1 - pred, zero_division=0),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "mcc": skm.matthews_corrcoef(y, pred),
        "roc_auc": skm.roc_auc_score(y, p),
        "pr_auc": skm.average_precision_score(y, p),
        "brier": skm.brier_score_loss(y, p),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def assert_matches_sklearn(result, y, p, threshold):
    for key, expected in sklearn_reference(y, p, threshold).items():
        assert result[key] == pytest.approx(expected, abs=TOL), key


# ----------------------------------------------------------------------------- binary_metrics


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.65, 0.9])
def test_binary_metrics_agree_with_sklearn(seed, threshold):
    y, p = random_scores(seed)
    result = binary_metrics(y, p, threshold)
    assert list(result) == ["threshold", *FLOAT_METRICS, *COUNT_METRICS]
    assert_matches_sklearn(result, y, p, threshold)


def test_types_are_plain_and_json_serialisable():
    y, p = random_scores(0)
    result = binary_metrics(y, p)
    assert all(type(result[key]) is int for key in COUNT_METRICS)
    assert all(type(result[key]) is float for key in ("threshold", *FLOAT_METRICS))
    json.dumps(result, allow_nan=False)


def test_score_equal_to_threshold_is_positive():
    result = binary_metrics([1, 0], [0.5, 0.49], threshold=0.5)
    assert (result["tp"], result["tn"], result["fp"], result["fn"]) == (1, 1, 0, 0)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_aucs_without_warnings(label):
    y = np.full(20, label)
    p = np.linspace(0, 1, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = binary_metrics(y, p)
        intervals = bootstrap_ci(y, p, n_boot=50)
    assert math.isnan(result["roc_auc"]) and math.isnan(result["pr_auc"])
    assert math.isnan(intervals["roc_auc"][0]) and math.isnan(intervals["pr_auc"][1])
    # The absent class's recall is undefined; balanced accuracy is the present one's.
    absent, present = ("sensitivity", "specificity") if label == 0 else ("specificity", "sensitivity")
    assert math.isnan(result[absent])
    assert result["balanced_accuracy"] == result[present] == 0.5
    assert result["mcc"] == 0.0


def test_no_predicted_positives_gives_zero_precision_and_f1():
    y, p = random_scores(1)
    result = binary_metrics(y, p, threshold=1.01)
    assert result["tp"] == result["fp"] == 0
    assert result["precision"] == result["f1"] == result["mcc"] == 0.0
    assert result["specificity"] == 1.0 and result["sensitivity"] == 0.0


@pytest.mark.parametrize("labels, scores, message", [
    ([], [], "empty"),
    ([0, 1], [0.5], "length"),
    ([0, 2], [0.1, 0.2], "labels must be"),
    ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
    ([0, 1], [0.1, math.nan], r"\[0, 1\]"),
])
def test_bad_inputs_raise_value_error(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(labels, scores)


# ----------------------------------------------------------------------------- bootstrap


def test_vectorised_resample_metrics_match_binary_metrics():
    y, p = random_scores(5, n=300)
    p_pos, p_neg = p[y == 1], p[y == 0]
    rng = np.random.default_rng(0)
    pos_idx = rng.integers(0, p_pos.size, size=(8, p_pos.size))
    neg_idx = rng.integers(0, p_neg.size, size=(8, p_neg.size))
    fast = _resample_metrics(p_pos, p_neg, pos_idx, neg_idx, threshold=0.45)
    for row in range(8):
        labels = np.r_[np.ones(p_pos.size), np.zeros(p_neg.size)]
        slow = binary_metrics(labels, np.r_[p_pos[pos_idx[row]], p_neg[neg_idx[row]]], 0.45)
        for name in FLOAT_METRICS:
            assert fast[name][row] == pytest.approx(slow[name], abs=TOL), name


def test_bootstrap_ci_is_seeded_and_brackets_the_point_estimate():
    y, p = random_scores(2, n=1000)
    intervals = bootstrap_ci(y, p, n_boot=300, seed=7)
    assert set(intervals) == set(FLOAT_METRICS)
    assert intervals == bootstrap_ci(y, p, n_boot=300, seed=7)
    assert intervals != bootstrap_ci(y, p, n_boot=300, seed=8)
    point = binary_metrics(y, p)
    for name in ("accuracy", "roc_auc", "pr_auc", "brier", "f1"):
        low, high = intervals[name]
        assert low <= point[name] <= high, name


def test_bootstrap_ci_narrows_as_n_grows():
    def width(n, name):
        y, p = random_scores(3, n=n)
        low, high = bootstrap_ci(y, p, n_boot=300, seed=0)[name]
        return high - low

    for name in ("roc_auc", "accuracy"):
        assert width(5000, name) < 0.5 * width(200, name), name


def test_bootstrap_ci_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([0, 1], [0.1, 0.9], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([0, 1], [0.1, 0.9], alpha=1.5)


# ----------------------------------------------------------------------------- thresholds

HAND_LABELS = [0, 0, 0, 0, 1, 0, 1, 1]
HAND_SCORES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def test_select_thresholds_on_a_hand_example():
    # t=0.5: tp 3, fp 1 -> F1 6/7 (best). Negatives are 0.1-0.4 and 0.6:
    # 4 of 5 below 0.5 (specificity 0.8), all 5 below 0.7.
    selected = select_thresholds(HAND_LABELS, HAND_SCORES, target_specificities=(0.8, 0.99, 1.0))
    assert selected == {"max_f1": 0.5, "spec_0.8": 0.5, "spec_0.99": 0.7, "spec_1": 0.7}


def test_select_thresholds_ties_and_unreachable_target():
    # F1 is 2/3 at t=0.2 (tp 2, fp 2) and at t=0.9 (tp 1, fp 0, fn 1): take the higher.
    assert select_thresholds([1, 0, 0, 1], [0.2, 0.5, 0.6, 0.9])["max_f1"] == 0.9
    # The top score is a negative: only a threshold above it reaches specificity 1.
    selected = select_thresholds([1, 0], [0.3, 0.9], target_specificities=(1.0,))
    assert selected["spec_1"] == np.nextafter(0.9, 1.0)
    assert binary_metrics([1, 0], [0.3, 0.9], selected["spec_1"])["specificity"] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        select_thresholds([0, 0], [0.1, 0.2])


@pytest.mark.parametrize("seed", [0, 1])
def test_select_thresholds_matches_brute_force(seed):
    y, p = random_scores(seed, n=300)
    candidates = np.unique(p)
    results = [binary_metrics(y, p, t) for t in candidates]
    f1 = np.array([r["f1"] for r in results])
    selected = select_thresholds(y, p, target_specificities=(0.9, 0.99))
    assert selected["max_f1"] == candidates[np.flatnonzero(f1 == f1.max())[-1]]
    for target in (0.9, 0.99):
        reaching = [t for t, r in zip(candidates, results) if r["specificity"] >= target]
        assert selected[f"spec_{target:g}"] == min(reaching)


def test_sensitivity_at_specificity_on_a_hand_example():
    result = sensitivity_at_specificity(HAND_LABELS, HAND_SCORES, specificities=(0.8, 1.0))
    assert result == {"sens_at_spec_0.8": 1.0, "sens_at_spec_1": pytest.approx(2 / 3)}
    assert math.isnan(sensitivity_at_specificity([0, 0], [0.1, 0.2])["sens_at_spec_0.95"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sensitivity_at_specificity_matches_sklearn_roc_curve(seed):
    y, p = random_scores(seed)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    result = sensitivity_at_specificity(y, p, specificities=(0.8, 0.95, 0.99))
    for target in (0.8, 0.95, 0.99):
        expected = tpr[1 - fpr >= target - 1e-12].max()
        assert result[f"sens_at_spec_{target:g}"] == pytest.approx(expected, abs=TOL)


# ----------------------------------------------------------------------------- table


def test_format_table_aligns_columns_and_shows_intervals():
    rows = {"zero-shot": {"threshold": 0.5, "roc_auc": 0.6914, "f_beta": 0.3, "tp": 12},
            "fine-tuned": {"threshold": 0.99973, "roc_auc": 0.7861, "f_beta": math.nan, "tp": 40}}
    table = format_table(rows, ci={"fine-tuned": {"roc_auc": (0.7612, 0.8118)}}, beta=2)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "zero-shot", "fine-tuned"]
    assert len({len(line) for line in lines}) == 1
    assert "0.786 [0.761, 0.812]" in table and "0.691" in table and "0.9997" in table
    assert lines[-2].split() == ["F2", "0.300", "n/a"]
    assert lines[-1].split() == ["TP", "12", "40"]
    with pytest.raises(ValueError, match="column names"):
        format_table(rows, ci={"roc_auc": (0.7, 0.8)})


# ----------------------------------------------------------------------------- CLI


def write_inputs(tmp_path, seed=0, n=400):
    """Labels for n images; predictions for all but the first 7, plus 5 unlabelled files."""
    y, p = random_scores(seed, n=n)
    names = [f"{i:08d}_000.png" for i in range(n)]
    labels_csv, predictions_csv = tmp_path / "labels.csv", tmp_path / "predictions.csv"
    with open(labels_csv, "w") as handle:
        handle.write("file_name,label,LIDC_ID\n")
        for name, label in zip(names, y):
            handle.write(f"{name},{'Nodule' if label else 'No Finding'},\n")
    with open(predictions_csv, "w") as handle:
        handle.write("file_name,label,confidence\n")
        for name, score in list(zip(names, p))[7:] + [(f"extra_{i}.png", 0.5) for i in range(5)]:
            handle.write(f"{name},{'Nodule' if score >= 0.5 else 'No Finding'},{score}\n")
    return labels_csv, predictions_csv, y[7:], p[7:]


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.62)])
def test_cli_prints_counts_and_writes_json_matching_sklearn(tmp_path, capsys, seed, threshold):
    labels_csv, predictions_csv, y, p = write_inputs(tmp_path, seed)
    out = tmp_path / "metrics.json"
    code = main(["--labels", str(labels_csv), "--predictions", str(predictions_csv),
                 "--threshold", str(threshold), "--bootstrap", "200", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"scored images: {y.size} ({y.sum()} Nodule" in printed
    assert "labelled images without a prediction: 7" in printed
    assert "predicted images without a label (ignored): 5" in printed
    assert "ROC-AUC" in printed and "[" in printed
    saved = json.loads(out.read_text())
    assert saved["counts"]["labelled_without_prediction"] == 7
    assert saved["counts"]["predicted_without_label"] == 5
    assert_matches_sklearn(saved["metrics"], y, p, threshold)
    assert saved["ci"] == {k: list(v) for k, v in bootstrap_ci(y, p, threshold, 200, 0).items()}


def test_cli_without_bootstrap_writes_null_ci(tmp_path, capsys):
    labels_csv, predictions_csv, _, _ = write_inputs(tmp_path)
    out = tmp_path / "metrics.json"
    assert main(["--labels", str(labels_csv), "--predictions", str(predictions_csv),
                 "--bootstrap", "0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ci"] is None
    assert "[" not in capsys.readouterr().out.split("metric")[1]


def bad_inputs(tmp_path):
    labels_csv, predictions_csv, _, _ = write_inputs(tmp_path)
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("file_name,label\na.png,Nodule\n")
    bad_label = tmp_path / "bad_label.csv"
    bad_label.write_text("file_name,label,LIDC_ID\n00000008_000.png,nodule,\n")
    other_images = tmp_path / "other.csv"
    other_images.write_text("file_name,label,confidence\nzzz.png,Nodule,0.9\n")
    bad_confidence = tmp_path / "bad_confidence.csv"
    bad_confidence.write_text("file_name,label,confidence\n00000008_000.png,Nodule,high\n")
    return {
        "missing file": ([tmp_path / "absent.csv", predictions_csv], "absent.csv"),
        "missing column": ([labels_csv, no_column], "no_column.csv"),
        "unknown label": ([bad_label, predictions_csv], "bad_label.csv"),
        "no overlap": ([labels_csv, other_images], "other.csv"),
        "bad confidence": ([labels_csv, bad_confidence], "bad_confidence.csv"),
    }


@pytest.mark.parametrize("case", ["missing file", "missing column", "unknown label",
                                  "no overlap", "bad confidence"])
def test_cli_bad_input_exits_2_with_one_sentence(tmp_path, capsys, case):
    (labels_csv, predictions_csv), file_name = bad_inputs(tmp_path)[case]
    code = main(["--labels", str(labels_csv), "--predictions", str(predictions_csv)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert file_name in captured.err and "Traceback" not in captured.err


def test_config_validation():
    with pytest.raises(ValueError, match="threshold"):
        ScoreConfig("l.csv", "p.csv", threshold=1.5)
    with pytest.raises(ValueError, match="bootstrap"):
        ScoreConfig("l.csv", "p.csv", bootstrap=-1)
    with pytest.raises(ValueError, match="f_beta"):
        ScoreConfig("l.csv", "p.csv", f_beta=0)


@pytest.mark.parametrize("launcher", [["classification_task/metrics.py"],
                                      ["-m", "classification_task.metrics"]])
def test_cli_runs_as_script_and_module(tmp_path, launcher):
    labels_csv, predictions_csv, _, _ = write_inputs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ok = subprocess.run([sys.executable, *launcher, "--labels", str(labels_csv), "--predictions",
                         str(predictions_csv), "--bootstrap", "50"],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "labelled images without a prediction: 7" in ok.stdout
    bad = subprocess.run([sys.executable, *launcher, "--labels", str(labels_csv),
                          "--predictions", str(predictions_csv), "--threshold", "2"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
