"""The F-beta score (against scikit-learn, in the bootstrap and the tuned thresholds) and the
metrics per image source, in the functions and in the metrics CLI."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from classification_task.metrics import (
    FLOAT_METRICS,
    _resample_metrics,
    binary_metrics,
    bootstrap_ci,
    image_sources,
    main,
    metrics_by_source,
    select_thresholds,
)
from classification_task.evaluation.report import MAX_WIDTH
from classification_task.tests.test_metrics import TOL, random_scores


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_f_beta_agrees_with_sklearn_and_follows_f1(seed, beta):
    y, p = random_scores(seed)
    for threshold in (0.3, 0.5, 1.01):
        result = binary_metrics(y, p, threshold, beta=beta)
        expected = skm.fbeta_score(y, (p >= threshold).astype(int), beta=beta, zero_division=0)
        assert result["f_beta"] == pytest.approx(expected, abs=TOL)
        assert list(result)[list(result).index("f1") + 1] == "f_beta"
    assert "f_beta" not in binary_metrics(y, p)
    assert binary_metrics(y, p, 0.4, beta=1.0)["f_beta"] == pytest.approx(binary_metrics(y, p, 0.4)["f1"])


@pytest.mark.parametrize("beta", [0.0, -1.0, math.nan, math.inf])
def test_bad_beta_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        binary_metrics([0, 1], [0.2, 0.7], beta=beta)


def test_image_sources_from_lidc_id_or_folder():
    sources = image_sources(["", "LIDC-IDRI-0001", "", "", " "],
                            ["00000001_000.png", "LIDC-IDRI-0001_1.png", "lidc_png_16_bit/x.png",
                             "/data/nih_filtered_images/00000002_000.png", "lidc_png_16_bit.png"])
    assert sources.tolist() == ["nih", "lidc", "lidc", "nih", "nih"]


def test_metrics_by_source_scores_each_source_alone():
    y, p = random_scores(4, n=200)
    sources = np.where(np.arange(200) < 50, "lidc", "nih")
    y[:50] = 1  # LIDC: nodules only, as in NoduLoCC
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics_by_source(y, p, sources, 0.4, beta=2.0)
    assert list(result) == ["nih", "lidc"]
    assert result["nih"] == binary_metrics(y[50:], p[50:], 0.4, beta=2.0)
    assert math.isnan(result["lidc"]["roc_auc"]) and result["lidc"]["tp"] + result["lidc"]["fn"] == 50
    assert list(metrics_by_source(y[50:], p[50:], sources[50:])) == ["nih"]  # no LIDC image: no entry

def test_bootstrap_ci_of_f_beta_is_seeded_and_brackets_it():
    y, p = random_scores(2, n=1000)
    intervals = bootstrap_ci(y, p, n_boot=300, seed=7, beta=0.5)
    assert list(intervals) == [*FLOAT_METRICS, "f_beta"]
    assert {k: v for k, v in intervals.items() if k != "f_beta"} == bootstrap_ci(y, p, n_boot=300, seed=7)
    low, high = intervals["f_beta"]
    assert low <= binary_metrics(y, p, beta=0.5)["f_beta"] <= high

@pytest.mark.parametrize("seed", [0, 1])
def test_max_f_beta_threshold_matches_brute_force(seed):
    y, p = random_scores(seed, n=300)
    candidates = np.unique(p)
    for beta in (0.5, 2.0):
        f_beta = np.array([binary_metrics(y, p, t, beta=beta)["f_beta"] for t in candidates])
        selected = select_thresholds(y, p, beta=beta)
        assert selected["max_f_beta"] == candidates[np.flatnonzero(f_beta == f_beta.max())[-1]]
    assert "max_f_beta" not in select_thresholds(y, p, beta=1.0)

def write_lidc_inputs(tmp_path, with_column=True):
    """Labels in which images 0-39 are LIDC nodules, and predictions for every image."""
    y, p = random_scores(3, n=200)
    y[:40] = 1
    names = [f"LIDC-IDRI-{i:04d}_1.png" if i < 40 else f"{i:08d}_000.png" for i in range(200)]
    lidc_ids = [f"LIDC-IDRI-{i:04d}" if i < 40 else "" for i in range(200)]
    labels = {"file_name": names, "label": ["Nodule" if v else "No Finding" for v in y]}
    if with_column:
        labels["LIDC_ID"] = lidc_ids
    pd.DataFrame(labels).to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame({"file_name": names, "label": "x", "confidence": p}).to_csv(tmp_path / "pred.csv", index=False)
    return tmp_path / "labels.csv", tmp_path / "pred.csv", y, p


def test_cli_scores_each_source_when_the_labels_carry_lidc_ids(tmp_path, capsys):
    labels_csv, predictions_csv, y, p = write_lidc_inputs(tmp_path)
    out = tmp_path / "metrics.json"
    assert main(["--labels", str(labels_csv), "--predictions", str(predictions_csv), "--threshold", "0.4",
                 "--bootstrap", "50", "--f_beta", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(len(line) <= MAX_WIDTH for line in printed.splitlines())
    assert "By image source, at threshold 0.4" in printed and "\nF2 " in printed
    assert [line.split()[:3] for line in printed.splitlines()[-4:-1]] == [
        ["all", "200", str(y.sum())], ["NIH", "160", str(y[40:].sum())], ["LIDC", "40", "40"]]
    saved = json.loads(out.read_text())
    assert saved["config"]["f_beta"] == 2.0 and "f_beta" in saved["metrics"] and "f_beta" in saved["ci"]
    assert list(saved["by_source"]) == ["nih", "lidc"]
    assert saved["by_source"]["nih"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[40:], p[40:]))
    assert saved["by_source"]["nih"]["f_beta"] == pytest.approx(
        skm.fbeta_score(y[40:], (p[40:] >= 0.4).astype(int), beta=2))
    assert saved["by_source"]["lidc"]["roc_auc"] is None  # NaN: LIDC holds nodules only


def test_cli_without_lidc_id_column_writes_null_by_source(tmp_path, capsys):
    labels_csv, predictions_csv, _, _ = write_lidc_inputs(tmp_path, with_column=False)
    out = tmp_path / "metrics.json"
    assert main(["--labels", str(labels_csv), "--predictions", str(predictions_csv),
                 "--bootstrap", "0", "--json", str(out)]) == 0
    assert "source" not in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["by_source"] is None and "f_beta" not in saved["metrics"]


def test_vectorised_resample_metrics_give_the_same_f_beta():
    y, p = random_scores(5, n=300)
    p_pos, p_neg = p[y == 1], p[y == 0]
    rng = np.random.default_rng(0)
    pos_idx = rng.integers(0, p_pos.size, size=(4, p_pos.size))
    neg_idx = rng.integers(0, p_neg.size, size=(4, p_neg.size))
    fast = _resample_metrics(p_pos, p_neg, pos_idx, neg_idx, threshold=0.45, beta=2.0)
    labels = np.r_[np.ones(p_pos.size), np.zeros(p_neg.size)]
    for row in range(4):
        slow = binary_metrics(labels, np.r_[p_pos[pos_idx[row]], p_neg[neg_idx[row]]], 0.45, beta=2.0)
        assert fast["f_beta"][row] == pytest.approx(slow["f_beta"], abs=TOL)
