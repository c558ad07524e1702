"""Evaluation and training plots as PNG files: ROC, precision-recall, reliability, training curves.

Figures are drawn on `matplotlib.figure.Figure` (Agg canvas) without pyplot, so
no global backend is switched and no window opens.

    from classification_task.evaluation.plots import save_all_plots
    save_all_plots("outputs/plots", labels, p_nodule, {"0.5": 0.5, "max_f1": 0.83},
                   log_history=trainer.state.log_history, best_step=450, metric_for_best="pr_auc")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from classification_task.common.run_files import save_figure_atomic

# What a researcher reads off a training run: (panel title, logged keys drawn in it).
# The Trainer also logs counts, the threshold and timings; they get no panel.
CURVE_PANELS = (
    ("loss (train, validation)", ("loss", "eval_loss")),
    ("learning rate", ("learning_rate",)),
    ("validation ROC-AUC", ("eval_roc_auc",)),
    ("validation PR-AUC", ("eval_pr_auc",)),
    ("validation F1", ("eval_f1",)),
    ("validation balanced accuracy", ("eval_balanced_accuracy",)),
)


def _new_figure(n_panels: int = 1, ncols: int = 1, panel_size=(5.0, 4.5)):
    nrows = math.ceil(n_panels / ncols)
    figure = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, axes[:n_panels]


def _arrays(labels: ArrayLike, p_nodule: ArrayLike) -> tuple[np.ndarray, np.ndarray, bool]:
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(p_nodule, dtype=np.float64).ravel()
    if y.size == 0 or y.shape != p.shape:
        raise ValueError("labels and p_nodule must be non-empty and of equal length.")
    return y, p, 0 < y.sum() < y.size


def _one_class_note(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "undefined: only one class present", ha="center", va="center")


def _operating_points(y, p, thresholds: Mapping[str, float]):
    """(name, threshold, fpr, recall, precision) of each named threshold (predict p >= t)."""
    points = []
    for name, threshold in thresholds.items():
        pred = p >= threshold
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        precision = tp / (tp + fp) if tp + fp else 0.0
        points.append((name, threshold, fp / np.sum(y == 0), tp / np.sum(y == 1), precision))
    return points


def plot_roc(path, labels: ArrayLike, p_nodule: ArrayLike,
             thresholds: Mapping[str, float] | None = None) -> Path:
    """ROC curve with its AUC and each named operating point marked."""
    y, p, both = _arrays(labels, p_nodule)
    figure, (ax,) = _new_figure()
    if not both:
        _one_class_note(ax, "ROC")
        return save_figure_atomic(figure, path)
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"ROC (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    for name, threshold, point_fpr, recall, _ in _operating_points(y, p, thresholds or {}):
        ax.plot(point_fpr, recall, "o", label=f"{name} (t={threshold:.4g})")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize="small")
    return save_figure_atomic(figure, path)


def plot_pr(path, labels: ArrayLike, p_nodule: ArrayLike,
            thresholds: Mapping[str, float] | None = None) -> Path:
    """Precision-recall curve, the prevalence baseline, and each named operating point."""
    y, p, both = _arrays(labels, p_nodule)
    figure, (ax,) = _new_figure()
    if not both:
        _one_class_note(ax, "Precision-recall")
        return save_figure_atomic(figure, path)
    precision, recall, _ = precision_recall_curve(y, p)
    ax.step(recall, precision, where="post",
            label=f"precision-recall (AP {average_precision_score(y, p):.3f})")
    ax.axhline(y.mean(), linestyle=":", color="grey", label=f"prevalence {y.mean():.3f}")
    for name, threshold, _, point_recall, point_precision in _operating_points(y, p, thresholds or {}):
        ax.plot(point_recall, point_precision, "o", label=f"{name} (t={threshold:.4g})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper right", fontsize="small")
    return save_figure_atomic(figure, path)


def plot_reliability(path, labels: ArrayLike, p_nodule: ArrayLike, n_bins: int = 10) -> Path:
    """Reliability diagram (observed nodule rate per p bin) over a log-scale count histogram.

    Binned by hand rather than with calibration_curve so the per-bin counts are at
    hand for the histogram; with 4.5 % positives most high bins are nearly empty.
    """
    y, p, _ = _arrays(labels, p_nodule)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    filled = counts > 0
    mean_p = np.bincount(bins, weights=p, minlength=n_bins)[filled] / counts[filled]
    observed = np.bincount(bins, weights=y, minlength=n_bins)[filled] / counts[filled]
    figure, (top, bottom) = _new_figure(2, 1, panel_size=(5.0, 3.2))
    top.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    top.plot(mean_p, observed, "o-", label="model")
    top.set(ylabel="observed nodule rate", xlim=(0, 1), ylim=(0, 1),
            title=f"Reliability (Brier {np.mean((p - y) ** 2):.4f})")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(edges[:-1], counts, width=1.0 / n_bins, align="edge", edgecolor="white")
    bottom.set(xlabel="predicted p(nodule)", ylabel="images", yscale="log", xlim=(0, 1))
    return save_figure_atomic(figure, path)


def _history_series(log_history: Sequence[Mapping]) -> dict[str, tuple[list, list]]:
    """name -> (steps, values) of every numeric key logged with a step."""
    series: dict[str, tuple[list, list]] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if key not in ("step", "epoch") and step is not None and isinstance(value, (int, float)):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(value)
    return series


def training_curve_panels(log_history: Sequence[Mapping],
                          metric_for_best: str | None = None) -> list[tuple[str, list[str]]]:
    """(title, keys) of each panel of training_curves.png that has something logged.

    The panels of CURVE_PANELS, plus one for the metric that picks the best
    checkpoint when it is none of those (e.g. MCC or F-beta).
    """
    panels = list(CURVE_PANELS)
    if metric_for_best and f"eval_{metric_for_best}" not in {k for _, keys in panels for k in keys}:
        panels.append((f"validation {metric_for_best} (picks the best checkpoint)",
                       (f"eval_{metric_for_best}",)))
    series = _history_series(log_history)
    return [(title, [key for key in keys if key in series]) for title, keys in panels
            if any(key in series for key in keys)]


def plot_training_curves(path, log_history: Sequence[Mapping], best_step: int | None = None,
                         metric_for_best: str | None = None) -> Path | None:
    """Losses, learning rate and the validation metrics over steps, from a transformers
    `Trainer.state.log_history`; a dashed line marks the best checkpoint's step.
    None if nothing was logged."""
    panels = training_curve_panels(log_history, metric_for_best)
    if not panels:
        return None
    series = _history_series(log_history)
    figure, axes = _new_figure(len(panels), ncols=min(3, len(panels)), panel_size=(4.5, 3.5))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            label = {"loss": "train", "eval_loss": "validation"}.get(key, key.removeprefix("eval_"))
            ax.plot(*series[key], "o-" if key.startswith("eval_") else "-", label=label)
        if best_step is not None:
            ax.axvline(best_step, linestyle="--", color="grey")
        ax.set(xlabel="step", title=title)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    if best_step is not None:
        chosen = f" by validation {metric_for_best}" if metric_for_best else ""
        figure.suptitle(f"dashed line: the best checkpoint{chosen}, step {best_step}", fontsize="medium")
    return save_figure_atomic(figure, path)


def save_all_plots(out_dir, labels: ArrayLike, p_nodule: ArrayLike,
                   thresholds: Mapping[str, float] | None = None,
                   log_history: Sequence[Mapping] | None = None, best_step: int | None = None,
                   metric_for_best: str | None = None) -> list[Path]:
    """roc.png, pr.png, reliability.png and (with a log history) training_curves.png.

    Returns the written paths.
    """
    out_dir = Path(out_dir)
    written = [plot_roc(out_dir / "roc.png", labels, p_nodule, thresholds),
               plot_pr(out_dir / "pr.png", labels, p_nodule, thresholds),
               plot_reliability(out_dir / "reliability.png", labels, p_nodule)]
    if log_history:
        curves = plot_training_curves(out_dir / "training_curves.png", log_history, best_step, metric_for_best)
        if curves is not None:
            written.append(curves)
    return written
