"""The ensemble command: its figures against scikit-learn on the averaged scores, thresholds, bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, f1_score, matthews_corrcoef, roc_auc_score

from classification_task import ensemble

N_TEST, N_VAL = 80, 60


def _members(folder: Path, split: str, n: int, labels: np.ndarray, seed: int) -> list[Path]:
    """Three members' prediction files (train.py's format) of the same images, in different row orders."""
    rng = np.random.default_rng(seed)
    names = [f"{split}_{i:03d}.png" for i in range(n)]
    paths = []
    for k, sharpness in enumerate((1.0, 3.0, 0.3)):
        p = 1 / (1 + np.exp(-sharpness * (labels * 1.2 + rng.normal(size=n))))
        order = rng.permutation(n)
        frame = pd.DataFrame({"file_name": np.array(names)[order],
                              "label": np.where(p[order] >= 0.5, "Nodule", "No Finding"), "confidence": p[order],
                              "true_label": np.where(labels[order] == 1, "Nodule", "No Finding")})
        path = folder / f"run{k}" / f"{split}_predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    y_test, y_val = (rng.random(N_TEST) < 0.3).astype(int), (rng.random(N_VAL) < 0.3).astype(int)
    test = _members(tmp_path, "test", N_TEST, y_test, seed=1)
    val = _members(tmp_path, "val", N_VAL, y_val, seed=2)
    labels = tmp_path / "test_labels.csv"
    pd.DataFrame({"file_name": [f"test_{i:03d}.png" for i in range(N_TEST)],
                  "label": np.where(y_test == 1, "Nodule", "No Finding")}).to_csv(labels, index=False)
    return {"test": test, "val": val, "labels": labels, "y_test": y_test, "y_val": y_val, "dir": tmp_path}


def _scores(paths, n, split) -> np.ndarray:
    """(images, members) p(nodule) in image order."""
    names = [f"{split}_{i:03d}.png" for i in range(n)]
    return np.column_stack([pd.read_csv(p).set_index("file_name").loc[names, "confidence"] for p in paths])


def _best_f1_threshold(y, score) -> float:
    """The obvious search: every distinct score, the highest of those with the best F1."""
    candidates = np.unique(score)
    f1 = [f1_score(y, score >= t, zero_division=0) for t in candidates]
    return float(candidates[len(f1) - 1 - int(np.argmax(f1[::-1]))])


@pytest.mark.parametrize("method", ["mean", "rank"])
def test_figures_equal_sklearn_on_the_averaged_scores(files, method):
    out = files["dir"] / "ens.csv"
    argv = ["--predictions", *map(str, files["test"]), "--val_predictions", *map(str, files["val"]),
            "--labels", str(files["labels"]), "--output", str(out), "--method", method,
            "--json", str(files["dir"] / "ens.json")]
    assert ensemble.main(argv) == 0
    test, val = _scores(files["test"], N_TEST, "test"), _scores(files["val"], N_VAL, "val")
    if method == "rank":
        test = np.column_stack([rankdata(c) / len(c) for c in test.T])
        val = np.column_stack([rankdata(c) / len(c) for c in val.T])
    expected, expected_val = test.mean(axis=1), val.mean(axis=1)
    threshold = _best_f1_threshold(files["y_val"], expected_val)

    written = pd.read_csv(out).set_index("file_name").loc[[f"test_{i:03d}.png" for i in range(N_TEST)]]
    np.testing.assert_allclose(written["confidence"], expected, rtol=1e-12)
    assert (written["label"] == np.where(expected >= threshold, "Nodule", "No Finding")).all()
    result = json.loads((files["dir"] / "ens.json").read_text())
    assert result["thresholds"]["ensemble"] == pytest.approx(threshold, rel=1e-12)
    got, y = result["metrics"]["ensemble"], files["y_test"]
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, expected), rel=1e-12)
    assert got["pr_auc"] == pytest.approx(average_precision_score(y, expected), rel=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y, expected >= threshold), rel=1e-12)
    assert got["mcc"] == pytest.approx(matthews_corrcoef(y, expected >= threshold), rel=1e-12)
    # Each member at its own threshold tuned on its own validation scores.
    first = _scores(files["test"], N_TEST, "test")[:, 0]
    own = _best_f1_threshold(files["y_val"], _scores(files["val"], N_VAL, "val")[:, 0])
    assert result["metrics"]["run0"]["f1"] == pytest.approx(f1_score(y, first >= own), rel=1e-12)
    assert result["metrics"]["run0"]["roc_auc"] == pytest.approx(roc_auc_score(y, first), rel=1e-12)


def test_without_validation_the_given_threshold_labels(files):
    out = files["dir"] / "ens.csv"
    assert ensemble.main(["--predictions", *map(str, files["test"][:2]), "--output", str(out),
                          "--threshold", "0.4"]) == 0
    mean = _scores(files["test"][:2], N_TEST, "test").mean(axis=1)
    written = pd.read_csv(out).set_index("file_name").loc[[f"test_{i:03d}.png" for i in range(N_TEST)]]
    assert (written["label"] == np.where(mean >= 0.4, "Nodule", "No Finding")).all()


def _fails(argv, capsys) -> str:
    assert ensemble.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_bad_input_gets_one_sentence(files, capsys):
    out = str(files["dir"] / "ens.csv")
    fewer = pd.read_csv(files["test"][1]).iloc[:-3]
    fewer.to_csv(files["dir"] / "fewer.csv", index=False)
    err = _fails(["--predictions", str(files["test"][0]), str(files["dir"] / "fewer.csv"), "--output", out], capsys)
    assert "different images" in err and "fewer.csv" in err
    # A member whose confidence is that of the predicted label, as metrics.py refuses it.
    flipped = pd.read_csv(files["test"][1])
    flipped["confidence"] = np.where(flipped["label"] == "Nodule", flipped["confidence"], 1 - flipped["confidence"])
    flipped.to_csv(files["dir"] / "flipped.csv", index=False)
    err = _fails(["--predictions", str(files["test"][0]), str(files["dir"] / "flipped.csv"), "--output", out], capsys)
    assert "confidence of the predicted label" in err and "--confidence_of predicted" in err
    err = _fails(["--predictions", str(files["test"][0]), "--output", out], capsys)
    assert "two or more" in err
    err = _fails(["--predictions", *map(str, files["test"]), "--val_predictions", str(files["val"][0]),
                  "--output", out], capsys)
    assert "one file per member" in err
    assert not Path(out).exists(), "nothing is written when the input is refused"
