"""Combine several classifiers' p(nodule) into one challenge CSV: the mean of the scores, or of their ranks.

    python classification_task/ensemble.py \\
        --predictions outputs/medgemma/test_predictions.csv outputs/rad_dino/test_predictions.csv \\
        --val_predictions outputs/medgemma/val_predictions.csv outputs/rad_dino/val_predictions.csv \\
        --labels outputs/rad_dino/test_labels.csv --output outputs/ensemble/classification_test_results.csv

Members are prediction CSVs with file_name and confidence = p(nodule) (and a label
column, checked against it as by metrics.py): train.py's test_predictions.csv /
val_predictions.csv or inference.py's classification_test_results.csv, all of the
same images. `--method mean`: the ensemble's score is the mean p(nodule).
`--method rank`: each member's scores become rank fractions within its file (the
mean rank of ties, divided by the number of images), then averaged, so that a
member with sharp and one with soft probabilities weigh alike; the score then
ranks images but is no probability (its Brier score means nothing).
With --val_predictions (one per member, in the same order) the threshold
(--threshold_name, default max_f1) is tuned on the ensemble of the validation
files, labelled by --val_labels or by their true_label column, and applied
unchanged to the test files; without them, --threshold. With --labels the metric
table of each member (at its own validation-tuned threshold) and of the ensemble
is printed side by side, and written with --json.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from classification_task.common import cli
from classification_task.evaluation.confidence import ConfidenceOf
from classification_task.dataset import INT_TO_LABEL, LABEL_TO_INT, DataError, read_csv_table, read_labels_csv
from classification_task.metrics import (
    COUNT_METRICS,
    FLOAT_METRICS,
    binary_metrics,
    bootstrap_ci,
    _match_base_names,
    load_predictions,
    select_thresholds,
)
from classification_task.evaluation.report import format_table
from classification_task.common.run_files import write_csv_atomic, write_json_atomic

THRESHOLD_NAMES = ("max_f1", "spec_0.99", "spec_0.995")


@dataclass
class EnsembleConfig:
    predictions: list[str] = cli.arg(cli.REQUIRED, "the members' prediction CSVs (file_name,label,confidence), "
                                                   "two or more, all of the same images")
    output: str = cli.arg("outputs/ensemble/classification_test_results.csv", "the ensemble's challenge CSV")
    method: Literal["mean", "rank"] = cli.arg("mean", "mean: mean p(nodule); rank: mean rank fraction")
    val_predictions: list[str] | None = cli.arg(None, "the members' validation predictions, in the same order: "
                                                      "the threshold is tuned on their ensemble")
    val_labels: str | None = cli.arg(None, "labels of the validation images (file_name,label); default: the "
                                           "true_label column of the --val_predictions files")
    threshold_name: Literal["max_f1", "spec_0.99", "spec_0.995"] = cli.arg(
        "max_f1", "which threshold tuned on validation labels the images")
    threshold: float = cli.arg(0.5, "label Nodule at score >= threshold when no --val_predictions are given")
    labels: str | None = cli.arg(None, "test labels (file_name,label[,LIDC_ID]): print each member's and the "
                                       "ensemble's metrics side by side")
    bootstrap: int = cli.arg(0, "stratified bootstrap resamples for 95% intervals with --labels; 0 = none")
    seed: int = cli.arg(0, "bootstrap seed")
    json_path: str | None = cli.arg(None, "also write thresholds and metrics to this JSON file", flag="json")
    confidence_of: ConfidenceOf | None = cli.arg(
        None, "what every member's confidence holds: nodule = p(nodule); predicted = the confidence of the "
        "predicted label; unset: p(nodule), refused when a label column contradicts it")

    def __post_init__(self) -> None:
        if len(self.predictions) < 2:
            raise ValueError("--predictions needs two or more files: an ensemble of one is that model.")
        if self.val_predictions is not None and len(self.val_predictions) != len(self.predictions):
            raise ValueError(f"--val_predictions needs one file per member ({len(self.predictions)}), in the "
                             f"order of --predictions; got {len(self.val_predictions)}.")
        if self.val_labels and self.val_predictions is None:
            raise ValueError("--val_labels labels the --val_predictions: pass those too.")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"--threshold must lie in [0, 1], got {self.threshold}.")
        if self.bootstrap < 0:
            raise ValueError(f"--bootstrap must be 0 (off) or a number of resamples, got {self.bootstrap}.")


def member_names(paths: list[str]) -> list[str]:
    """Short column names: the file's folder (a run's output folder), else its stem, else its position."""
    for name_of in (lambda p: Path(p).parent.name, lambda p: Path(p).stem):
        names = [name_of(path) for path in paths]
        if all(names) and len(set(names)) == len(names):
            return names
    return [f"member {i + 1}" for i in range(len(paths))]


def read_members(paths: list[str], confidence_of: ConfidenceOf | None) -> pd.DataFrame:
    """p(nodule) of every member, a column each, one row per image; refuses files of other images."""
    members = [load_predictions(Path(path), confidence_of) for path in paths]
    first = set(members[0].index)
    for path, scores in zip(paths[1:], members[1:]):
        extra, missing = sorted(set(scores.index) - first), sorted(first - set(scores.index))
        if extra or missing:
            example = (extra or missing)[0]
            raise DataError(f"{path} and {paths[0]} score different images ({len(extra)} only in the first named, "
                            f"{len(missing)} only in the second, e.g. {example}); score the same images with "
                            "every member.")
    return pd.DataFrame({i: scores for i, scores in enumerate(members)}).loc[members[0].index]


def combine(scores: pd.DataFrame, method: str) -> np.ndarray:
    """The ensemble score per row: mean p(nodule), or mean rank fraction (ties share their mean rank)."""
    values = scores.to_numpy(dtype=np.float64)
    if method == "rank":
        values = np.column_stack([rankdata(column) / len(column) for column in values.T])
    return values.mean(axis=1)


def validation_labels(config: EnsembleConfig, names: pd.Index) -> np.ndarray:
    """0/1 per validation image, from --val_labels or from the files' true_label column (which must agree)."""
    if config.val_labels:
        labels = read_labels_csv(Path(config.val_labels), "pass an existing CSV file with --val_labels")
        labels = labels.set_index("file_name")["label"]
        absent = names.difference(labels.index)
        if len(absent):
            raise DataError(f"{config.val_labels} has no label for {len(absent)} validation image(s), e.g. "
                            f"{absent[0]}; pass the labels of the --val_predictions images.")
        return labels.loc[names].to_numpy()
    found = None
    for path in config.val_predictions:
        table = read_csv_table(Path(path), ("file_name", "true_label"),
                               "pass the val_predictions.csv files train.py wrote")
        column = table.set_index("file_name")["true_label"].str.strip()
        if not column.isin(list(LABEL_TO_INT)).all():
            raise DataError(f"{path} has true_label values other than Nodule / No Finding; fix them or pass "
                            "--val_labels.")
        labels = column.map(LABEL_TO_INT).loc[names].to_numpy()
        if found is not None and not np.array_equal(found, labels):
            raise DataError(f"{path} labels the validation images differently from {config.val_predictions[0]}; "
                            "pass --val_labels.")
        found = labels
    return found


def tuned_threshold(labels: np.ndarray, scores: np.ndarray, name: str, source: str) -> float:
    try:
        return select_thresholds(labels, scores)[name]
    except ValueError:
        raise DataError(f"the validation images of {source} hold one class only; thresholds need both "
                        "Nodule and No Finding images.") from None


def thresholds(config: EnsembleConfig) -> dict[str, float]:
    """The threshold of each member (on its own validation scores) and of the ensemble ("ensemble")."""
    if config.val_predictions is None:
        return {"ensemble": config.threshold}
    val = read_members(config.val_predictions, config.confidence_of)
    y_val = validation_labels(config, val.index)
    names = member_names(config.predictions)
    found = {name: tuned_threshold(y_val, val[i].to_numpy(), config.threshold_name, path)
             for i, (name, path) in enumerate(zip(names, config.val_predictions))}
    found["ensemble"] = tuned_threshold(y_val, combine(val, config.method), config.threshold_name,
                                        "--val_predictions")
    return found


def side_by_side(config: EnsembleConfig, scores: pd.DataFrame, ensemble: np.ndarray, at: dict) -> dict:
    """Metrics of each member and of the ensemble on the labelled test images ({"metrics", "ci", "n_scored"})."""
    labels = read_labels_csv(Path(config.labels), "pass an existing CSV file with --labels")
    labels = labels.set_index("file_name")["label"]
    # inference.py --recursive names files with their sub-folder; bare label names then match base names.
    scores = _match_base_names(pd.DataFrame(scores.to_numpy(), index=scores.index), labels)
    common = scores.index.intersection(labels.index)
    if common.empty:
        raise DataError(f"none of the file names in {config.predictions[0]} appear in {config.labels}; check "
                        "that both describe the same images.")
    keep = scores.index.isin(common)
    y = labels.loc[scores.index[keep]].to_numpy()
    columns = {name: scores[i].to_numpy()[keep] for i, name in enumerate(member_names(config.predictions))}
    columns["ensemble"] = ensemble[keep]
    metrics = {name: binary_metrics(y, p, at.get(name, config.threshold)) for name, p in columns.items()}
    ci = {name: bootstrap_ci(y, p, at.get(name, config.threshold), config.bootstrap, config.seed)
          for name, p in columns.items()} if config.bootstrap else {}
    return {"n_scored": int(keep.sum()), "metrics": metrics, "ci": ci}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(EnsembleConfig, __doc__, argv)
    if config is None:
        return 2
    try:
        scores = read_members(config.predictions, config.confidence_of)
        at = thresholds(config)
        ensemble = combine(scores, config.method)
        result = {"config": asdict(config), "thresholds": at}
        if config.labels:
            result |= side_by_side(config, scores, ensemble, at)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threshold = at["ensemble"]
    frame = pd.DataFrame({"file_name": scores.index,
                          "label": [INT_TO_LABEL[int(p >= threshold)] for p in ensemble], "confidence": ensemble})
    write_csv_atomic(frame, config.output)
    if config.labels:
        names = [*FLOAT_METRICS, *COUNT_METRICS]
        print(f"Test: {result['n_scored']} labelled images; each member at its own threshold, the ensemble "
              f"({config.method}) at {threshold:.4g}:")
        print(format_table(result["metrics"], result["ci"] or None, ["threshold", *names], corner="metric"))
    if config.json_path:
        write_json_atomic(config.json_path, result)
    n_nodule = int((frame["label"] == INT_TO_LABEL[1]).sum())
    print(f"{len(frame)} image(s), {n_nodule} labelled {INT_TO_LABEL[1]} at threshold {threshold:.4g} "
          f"({config.method} of {len(config.predictions)} members): {config.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
