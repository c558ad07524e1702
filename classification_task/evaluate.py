"""End-of-run evaluation: thresholds tuned on validation, applied unchanged to test.

Scores the fine-tuned model (and, when the model carries a LoRA adapter, the
zero-shot base model) on validation and test; tests each at 0.5 and at each
tuned threshold, overall and per image source (NIH, LIDC); prints the tables of
`report.py` and writes metrics.json (schema in the README), test/val
predictions and plots next to them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from classification_task.dataset import INT_TO_LABEL, Preprocessing, RadiographDataset
from classification_task.metrics import (
    binary_metrics,
    bootstrap_ci,
    image_sources,
    metrics_by_source,
    select_thresholds,
    sensitivity_at_specificity,
)
from classification_task.classifiers import score_batches
from classification_task.trainer import best_checkpoint
from classification_task.evaluation.plots import save_all_plots
from classification_task.evaluation.report import evaluation_text
from classification_task.common.run_files import write_csv_atomic, write_json_atomic


def score_split(model, processor, frame: pd.DataFrame, prep: Preprocessing, batch_size: int, desc: str,
                cache_dir: str | None = None, unreadable=None) -> tuple[pd.DataFrame, np.ndarray]:
    """The readable rows of `frame` and their p(nodule); unreadable images go to `unreadable` (UnreadableImages)."""
    dataset = RadiographDataset(frame, prep, cache_dir)
    scores, skipped = [np.zeros(0)], []
    for _, p_nodule, batch_skipped in score_batches(model, processor, dataset, batch_size=batch_size, desc=desc):
        scores.append(p_nodule)
        skipped += batch_skipped
        if unreadable is not None:
            unreadable.record(batch_skipped)
    readable = frame[~frame["file_name"].isin({name for name, _ in skipped})].reset_index(drop=True)
    return readable, np.concatenate(scores)


def frame_sources(frame: pd.DataFrame) -> np.ndarray:
    """"nih" / "lidc" per row, from LIDC_ID or the image's folder."""
    names = frame["path"] if "path" in frame.columns else frame["file_name"]
    return image_sources(frame["lidc_id"].to_numpy(), names.to_numpy())


def model_results(y_val, p_val, y_test, p_test, sources=None, beta: float | None = None,
                  n_boot: int = 0, seed: int = 0) -> dict:
    """One model's test results at 0.5 and at each threshold tuned on validation.

    Returns `thresholds`, `test` / `ci_95` / `by_source` keyed `threshold_{name}`
    (`ci_95` empty when n_boot is 0, `by_source` when sources are given) and
    `sensitivity_at_specificity`.
    """
    try:
        thresholds = select_thresholds(y_val, p_val, beta=beta)
    except ValueError:
        thresholds = {}  # validation with one class only: nothing to tune on
    at = {"threshold_0.5": 0.5, **{f"threshold_{key}": value for key, value in thresholds.items()}}
    results = {
        "thresholds": thresholds,
        "test": {key: binary_metrics(y_test, p_test, value, beta) for key, value in at.items()},
        "ci_95": {key: bootstrap_ci(y_test, p_test, value, n_boot, seed, beta=beta)
                  for key, value in at.items()} if n_boot else {},
        "sensitivity_at_specificity": sensitivity_at_specificity(y_test, p_test),
    }
    if sources is not None:
        per_threshold = {key: metrics_by_source(y_test, p_test, sources, value, beta) for key, value in at.items()}
        results["by_source"] = {source: {key: per_threshold[key][source] for key in at}
                                for source in per_threshold["threshold_0.5"]}
    return results


def build_report(results: dict[str, dict], n_val: int, y_test, beta: float | None = None,
                 n_boot: int = 0, best_checkpoint: dict | None = None) -> dict:
    """The content of metrics.json from `model_results` per model ("fine_tuned", "zero_shot")."""
    main = "fine_tuned" if "fine_tuned" in results else next(iter(results))
    report = {
        "n_val": n_val, "n_test": int(len(y_test)), "n_test_positive": int(np.sum(y_test)),
        "beta": beta, "n_bootstrap": n_boot, "best_checkpoint": best_checkpoint,
        "thresholds": results[main]["thresholds"],
    }
    if main != "zero_shot" and "zero_shot" in results:
        report["zero_shot_thresholds"] = results["zero_shot"]["thresholds"]
    for part in ("test", "ci_95", "sensitivity_at_specificity", "by_source"):
        report[part] = {name: result[part] for name, result in results.items() if part in result}
    return report


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


@dataclass(frozen=True)
class EvaluationSettings:
    """How `evaluate_run` scores and reports one run; `for_run` builds it from a training config."""
    out_dir: Path
    prep: Preprocessing
    batch_size: int = 4
    n_boot: int = 1000  # bootstrap resamples of the test confidence intervals (0: none)
    seed: int = 0
    zero_shot: bool = True  # also score the base model without its adapter, side by side
    cache_dir: str | None = None
    beta: float | None = None
    best: dict | None = None  # the best checkpoint's {"step", "metric", "value"}
    log_history: list | None = None  # the Trainer's, for the training curves
    model_name: str = "fine_tuned"  # "zero_shot": the model is the base model without adapter

    @classmethod
    def for_run(cls, config, trainer=None) -> EvaluationSettings:
        """The settings of a train.py run (its TrainConfig); `trainer` None: --eval_only, nothing trained."""
        zero_shot_base = config.eval_only and config.adapter is None
        return cls(
            out_dir=Path(config.output_dir), prep=config.preprocessing, batch_size=config.eval_batch_size,
            n_boot=config.bootstrap, seed=config.seed, cache_dir=config.cache_dir, beta=config.beta,
            zero_shot=config.zero_shot and not zero_shot_base,
            best=None if trainer is None else best_checkpoint(trainer.state, config.metric_for_best),
            log_history=None if trainer is None else trainer.state.log_history,
            model_name="zero_shot" if zero_shot_base and config.model_kind == "medgemma" else "fine_tuned",
        )


def evaluate_run(model, processor, frames: dict[str, pd.DataFrame], settings: EvaluationSettings,
                 unreadable=None) -> dict:
    """Score val and test, print the tables, write metrics.json, predictions and plots.

    `settings.best` is recorded and marked on the training curves. Unreadable
    images are left out and recorded in `unreadable` (UnreadableImages).
    """
    s = settings
    out_dir, prep, batch_size, cache_dir, beta, model_name = \
        s.out_dir, s.prep, s.batch_size, s.cache_dir, s.beta, s.model_name
    val, p_val = score_split(model, processor, frames["val"], prep, batch_size, "validation", cache_dir, unreadable)
    test, p_test = score_split(model, processor, frames["test"], prep, batch_size, "test", cache_dir, unreadable)
    y_val, y_test = val["label"].to_numpy(), test["label"].to_numpy()
    sources = frame_sources(test)  # of the rows scored
    results = {model_name: model_results(y_val, p_val, y_test, p_test, sources, beta, s.n_boot, s.seed)}
    if s.zero_shot and model_name != "zero_shot" and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            _, p_val_0 = score_split(model, processor, val, prep, batch_size, "validation, zero-shot", cache_dir)
            _, p_test_0 = score_split(model, processor, test, prep, batch_size, "test, zero-shot", cache_dir)
        results["zero_shot"] = model_results(y_val, p_val_0, y_test, p_test_0, sources, beta, s.n_boot, s.seed)
    report = build_report(results, len(val), y_test, beta, s.n_boot, s.best)
    print("\n" + evaluation_text(report))
    write_json_atomic(out_dir / "metrics.json", report)
    write_csv_atomic(predictions_frame(test, p_test), out_dir / "test_predictions.csv")
    write_csv_atomic(predictions_frame(val, p_val), out_dir / "val_predictions.csv")
    write_csv_atomic(labels_frame(test), out_dir / "test_labels.csv")
    with contextlib.suppress(ValueError):
        save_all_plots(out_dir, y_test, p_test, results[model_name]["thresholds"], s.log_history,
                       best_step=(s.best or {}).get("step"), metric_for_best=(s.best or {}).get("metric"))
    return report
