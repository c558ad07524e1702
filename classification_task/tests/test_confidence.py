"""Prediction files whose confidence is that of the predicted label, not p(nodule)."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from classification_task.evaluation.confidence import threshold_misfits
from classification_task.metrics import main


def _team_files(tmp_path, confidence_of_predicted: bool, n=400, seed=0):
    """Labels and a prediction file of a model with ROC-AUC about 0.85, labelled at p >= 0.5."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    p = 1 / (1 + np.exp(-(1.5 * y - 0.9 + rng.normal(0, 1, n))))
    names = [f"{i:08d}_000.png" for i in range(n)]
    labels_csv, predictions_csv = tmp_path / "labels.csv", tmp_path / "predictions.csv"
    labels_csv.write_text("file_name,label,LIDC_ID\n" + "".join(
        f"{name},{'Nodule' if t else 'No Finding'},\n" for name, t in zip(names, y)))
    predicted = p >= 0.5
    confidence = np.where(predicted, p, 1 - p) if confidence_of_predicted else p
    predictions_csv.write_text("file_name,label,confidence\n" + "".join(
        f"{name},{'Nodule' if nodule else 'No Finding'},{c:.6f}\n"
        for name, nodule, c in zip(names, predicted, confidence)))
    return labels_csv, predictions_csv, y, p


def _roc_auc(tmp_path, labels_csv, predictions_csv, *extra) -> float:
    out = tmp_path / "m.json"
    assert main(["--labels", str(labels_csv), "--predictions", str(predictions_csv), "--bootstrap", "0",
                 "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())["metrics"]["roc_auc"]


def test_a_file_of_predicted_label_confidences_is_refused_with_the_way_to_score_it(tmp_path, capsys):
    labels_csv, predictions_csv, y, p = _team_files(tmp_path, confidence_of_predicted=True)
    assert main(["--labels", str(labels_csv), "--predictions", str(predictions_csv), "--bootstrap", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {predictions_csv} seems to hold the confidence of the predicted label")
    assert "No Finding rows have a confidence above 0.5" in captured.err
    assert "--confidence_of predicted" in captured.err and "--confidence_of nodule" in captured.err

    expected = roc_auc_score(y, p)
    assert expected > 0.8
    assert _roc_auc(tmp_path, labels_csv, predictions_csv, "--confidence_of", "predicted") == \
        pytest.approx(expected, abs=1e-4)
    assert _roc_auc(tmp_path, labels_csv, predictions_csv, "--confidence_of", "nodule") < 0.7  # as the file says


def test_a_p_nodule_file_is_scored_as_it_is(tmp_path):
    labels_csv, predictions_csv, y, p = _team_files(tmp_path, confidence_of_predicted=False)
    assert _roc_auc(tmp_path, labels_csv, predictions_csv) == pytest.approx(roc_auc_score(y, p), abs=1e-4)


def test_labels_that_follow_from_no_threshold_are_refused(tmp_path, capsys):
    labels_csv, predictions_csv, _, _ = _team_files(tmp_path, confidence_of_predicted=False)
    text = predictions_csv.read_text().replace("Nodule", "X").replace("No Finding", "Nodule").replace("X", "No Finding")
    predictions_csv.write_text(text)  # every label swapped
    assert main(["--labels", str(labels_csv), "--predictions", str(predictions_csv), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert "follow from its confidence by no threshold" in err and "--confidence_of" in err
    predictions_csv.write_text("file_name,confidence\n00000000_000.png,0.5\n")
    assert main(["--labels", str(labels_csv), "--predictions", str(predictions_csv),
                 "--confidence_of", "predicted"]) == 2
    assert "needs a label column" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(30))
def test_threshold_misfits_match_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 12))
    score = rng.integers(0, 5, n) / 4  # many ties
    is_nodule = rng.random(n) < 0.5
    # A row fits threshold t when its label is that of `score >= t`, or its score is t itself (a tie).
    brute = min((sum(not (score[i] == t or (score[i] >= t) == is_nodule[i]) for i in range(n))
                 for t in [*score, -1.0, 2.0]), default=0)
    assert threshold_misfits(is_nodule, score) == brute
