"""End-of-run evaluation: thresholds tuned on validation, applied unchanged to test.

Prints one table with the fine-tuned model (and, when the model carries a LoRA
adapter, the zero-shot base model) at 0.5 and at each tuned threshold, and
writes metrics.json, test/val predictions and plots next to it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from classification_task.dataset import INT_TO_LABEL, Preprocessing, RadiographDataset
from classification_task.metrics import (
    binary_metrics,
    bootstrap_ci,
    select_thresholds,
    sensitivity_at_specificity,
)
from classification_task.model import score_dataset
from classification_task.plots import save_all_plots
from classification_task.report import format_table
from classification_task.run_files import write_csv_atomic, write_json_atomic


def score_split(model, processor, frame: pd.DataFrame, prep: Preprocessing, batch_size: int, desc: str,
                cache_dir: str | None = None) -> np.ndarray:
    dataset = RadiographDataset(frame, prep, cache_dir)
    return score_dataset(model, processor, dataset, batch_size=batch_size, desc=desc)


def metric_columns(name: str, labels_val, p_val, labels_test, p_test) -> tuple[dict, dict]:
    """Test metrics at 0.5 and at each threshold tuned on validation."""
    columns = {f"{name} @0.5": binary_metrics(labels_test, p_test, 0.5)}
    try:
        thresholds = select_thresholds(labels_val, p_val)
    except ValueError:
        thresholds = {}  # validation with one class only: nothing to tune on
    for key, threshold in thresholds.items():
        columns[f"{name} @{key}"] = binary_metrics(labels_test, p_test, threshold)
    return columns, thresholds


def predictions_frame(frame: pd.DataFrame, p_nodule: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Challenge format (file_name,label,confidence) plus the true label for reference."""
    return pd.DataFrame(
        {
            "file_name": frame["file_name"].to_numpy(),
            "label": [INT_TO_LABEL[int(p >= threshold)] for p in p_nodule],
            "confidence": p_nodule,
            "true_label": [INT_TO_LABEL[int(v)] for v in frame["label"]],
        }
    )


def labels_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The split's rows in classification_labels.csv format, for the metrics CLI."""
    return pd.DataFrame({"file_name": frame["file_name"].to_numpy(),
                         "label": [INT_TO_LABEL[int(v)] for v in frame["label"]],
                         "LIDC_ID": frame["lidc_id"].to_numpy()})


def evaluate_run(model, processor, frames: dict[str, pd.DataFrame], out_dir: str | Path, prep: Preprocessing,
                 batch_size: int = 4, n_boot: int = 1000, seed: int = 0, zero_shot: bool = True,
                 log_history: list | None = None, cache_dir: str | None = None) -> dict:
    out_dir = Path(out_dir)
    val, test = frames["val"], frames["test"]
    y_val, y_test = val["label"].to_numpy(), test["label"].to_numpy()
    p_val = score_split(model, processor, val, prep, batch_size, "validation", cache_dir)
    p_test = score_split(model, processor, test, prep, batch_size, "test", cache_dir)
    columns, thresholds = metric_columns("fine-tuned", y_val, p_val, y_test, p_test)
    report = {"thresholds": thresholds}
    if zero_shot and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            p_val_0 = score_split(model, processor, val, prep, batch_size, "validation, zero-shot", cache_dir)
            p_test_0 = score_split(model, processor, test, prep, batch_size, "test, zero-shot", cache_dir)
        zero_columns, zero_thresholds = metric_columns("zero-shot", y_val, p_val_0, y_test, p_test_0)
        columns = {**zero_columns, **columns}
        report["zero_shot_thresholds"] = zero_thresholds
    ci = {"fine-tuned @0.5": bootstrap_ci(y_test, p_test, 0.5, n_boot=n_boot, seed=seed)} if n_boot else {}
    report.update(
        test=columns,
        ci_95=ci,
        sensitivity_at_specificity=sensitivity_at_specificity(y_test, p_test),
        n_val=len(val), n_test=len(test), n_test_positive=int(y_test.sum()),
    )
    print(f"\nTest split: {len(test)} images, {int(y_test.sum())} with nodules; thresholds tuned on validation.")
    print(format_table(columns, ci))
    for key, value in report["sensitivity_at_specificity"].items():
        print(f"{key}: {value:.3f}")
    write_json_atomic(out_dir / "metrics.json", report)
    write_csv_atomic(predictions_frame(test, p_test), out_dir / "test_predictions.csv")
    write_csv_atomic(predictions_frame(val, p_val), out_dir / "val_predictions.csv")
    write_csv_atomic(labels_frame(test), out_dir / "test_labels.csv")
    with contextlib.suppress(ValueError):
        save_all_plots(out_dir, y_test, p_test, thresholds, log_history)
    return report
