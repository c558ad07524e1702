"""Printed tables of a classification evaluation, no line wider than 100 columns.

`evaluation_text(report)` prints the content of train.py's `metrics.json`: the
fine-tuned model on test at 0.5 and at each threshold tuned on validation, with
bootstrap 95 % intervals; its threshold-free figures; a zero-shot vs fine-tuned
comparison in the reference report's columns; and the figures per image source
(NIH, LIDC), the check for a model that only recognises the LIDC source.
`score_text(result)` prints the metrics CLI's result. Everything printed is in
the JSON too. A table wider than 100 columns continues in a block below.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

MAX_WIDTH = 100
GAP = "  "
MODEL_NAMES = {"fine_tuned": "fine-tuned", "zero_shot": "zero-shot"}
SOURCE_NAMES = {"all": "all", "nih": "NIH", "lidc": "LIDC"}
LABELS = {
    "threshold": "threshold", "accuracy": "accuracy", "balanced_accuracy": "balanced acc",
    "sensitivity": "sensitivity", "specificity": "specificity", "precision": "precision",
    "f1": "F1", "mcc": "MCC", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "brier": "Brier",
    "tp": "TP", "fp": "FP", "fn": "FN", "tn": "TN",
}
COUNTS = ("tp", "fp", "fn", "tn")  # in print order
# The rows of the per-threshold table: what changes with the threshold.
THRESHOLD_ROWS = ("threshold", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
                  "precision", "f1", "f_beta", "mcc", *COUNTS)
# Tuned thresholds shown next to 0.5 where a table has room for one or two.
TUNED_FOR_COMPARISON = ("max_f1", "max_f_beta")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def metric_label(name: str, beta: float | None = None) -> str:
    """The printed name of a metric key: `roc_auc` -> ROC-AUC, `f_beta` -> F2 (beta 2)."""
    if name == "f_beta":
        return f"F{beta:g}" if beta is not None else "F-beta"
    if name.startswith("sens_at_spec_"):
        return f"sens @ spec {name.removeprefix('sens_at_spec_')}"
    return LABELS.get(name, name)


def number(value, digits: int = 3) -> str:
    if _missing(value):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def cell(name: str, value, interval: Sequence | None = None, digits: int = 3) -> str:
    """A value with its interval, `n/a` where undefined; thresholds to 4 significant digits."""
    if _missing(value):
        return "n/a"
    if name == "threshold":
        return f"{value:.4g}"  # tuned thresholds can sit at 0.9997; three decimals would hide that
    text = number(value, digits)
    if interval is not None and not _missing(interval[0]):
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def _blocks(widths: list[int], n_keys: int) -> list[list[int]]:
    """Value columns grouped so that each block, key columns included, fits MAX_WIDTH."""
    key_width = sum(widths[:n_keys]) + len(GAP) * (n_keys - 1)
    blocks, current, used = [], [], key_width
    for index in range(n_keys, len(widths)):
        if current and used + len(GAP) + widths[index] > MAX_WIDTH:
            blocks.append(current)
            current, used = [], key_width
        current.append(index)
        used += len(GAP) + widths[index]
    return blocks + [current] if current else blocks or [[]]


def grid(header: Sequence[str], rows: Sequence[Sequence[str]], n_keys: int = 1) -> str:
    """An aligned table: `n_keys` left-aligned label columns, then right-aligned values.

    Value columns that would pass MAX_WIDTH continue in a further block below,
    which repeats the label columns.
    """
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    parts = []
    for block in _blocks(widths, n_keys):
        columns = [*range(n_keys), *block]
        lines = [GAP.join(line[i].ljust(widths[i]) if i < n_keys else line[i].rjust(widths[i])
                          for i in columns).rstrip() for line in table]
        lines.insert(1, "-" * max(len(line) for line in lines))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def format_table(columns: Mapping[str, Mapping], ci: Mapping[str, Mapping] | None = None,
                 names: Sequence[str] | None = None, beta: float | None = None,
                 corner: str = "metric") -> str:
    """A row per metric, a column per entry of `columns` (a name -> metrics dict).

    `ci` maps the same column names to `bootstrap_ci` results; `names` picks and
    orders the metrics (default: every key, in order of appearance).
    """
    ci = ci or {}
    if not set(ci) <= set(columns):
        raise ValueError("ci must map column names of columns to bootstrap_ci results.")
    if names is None:
        names = list(dict.fromkeys(name for metrics in columns.values() for name in metrics))
    names = [name for name in names if any(name in metrics for metrics in columns.values())]
    rows = [[metric_label(name, beta),
             *(cell(name, metrics.get(name), ci.get(column, {}).get(name))
               for column, metrics in columns.items())] for name in names]
    return grid([corner, *columns], rows)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, MAX_WIDTH)


def _size(metrics: Mapping) -> tuple[str, str]:
    """(images, nodules) from a metrics dict's confusion counts."""
    n_nodules = metrics["tp"] + metrics["fn"]
    return str(n_nodules + metrics["tn"] + metrics["fp"]), str(n_nodules)


def _main_model(report: Mapping) -> str:
    return "fine_tuned" if "fine_tuned" in report["test"] else next(iter(report["test"]))


def _threshold_free_lines(metrics: Mapping, intervals: Mapping) -> list[str]:
    parts = [f"{metric_label(name)} {cell(name, metrics[name], intervals.get(name))}"
             for name in ("roc_auc", "pr_auc", "brier")]
    return _wrap(" | ".join(parts))


def _per_threshold_lines(report: Mapping, model: str, beta: float | None) -> list[str]:
    test, ci = report["test"][model], report.get("ci_95", {}).get(model, {})
    columns = {key.removeprefix("threshold_"): metrics for key, metrics in test.items()}
    intervals = {key.removeprefix("threshold_"): value for key, value in ci.items()}
    title = f"{MODEL_NAMES[model].capitalize()} model on test, at 0.5 and at thresholds tuned on validation:"
    lines = [title, format_table(columns, intervals, THRESHOLD_ROWS, beta, corner="at")]
    lines += _threshold_free_lines(test["threshold_0.5"], intervals.get("0.5", {}))
    sens = report.get("sensitivity_at_specificity", {}).get(model, {})
    if sens:
        pairs = [f"{key.removeprefix('sens_at_spec_')}: {number(value)}" for key, value in sens.items()]
        lines.append("sensitivity at specificity " + " | ".join(pairs))
    if intervals:
        lines.append(f"[low, high]: 95 % interval, stratified bootstrap, {report.get('n_bootstrap')} resamples.")
    return lines


def _compared_thresholds(report: Mapping) -> list[str]:
    shared = set.intersection(*(set(columns) for columns in report["test"].values()))
    return ["0.5", *(key for key in TUNED_FOR_COMPARISON if f"threshold_{key}" in shared)]


def _comparison_lines(report: Mapping, beta: float | None) -> list[str]:
    """Both models in the reference report's columns, at 0.5 and at max-F1 (each model's own)."""
    names = ["precision", "sensitivity", "specificity", "f1", *(["f_beta"] if beta else []),
             "roc_auc", "pr_auc"]
    header = ["model", "threshold",
              *("recall" if name == "sensitivity" else metric_label(name, beta) for name in names)]
    rows = []
    for key in _compared_thresholds(report):
        for model in ("zero_shot", "fine_tuned"):
            metrics = report["test"][model][f"threshold_{key}"]
            at = key if key == "0.5" else f"{key} ({metrics['threshold']:.4g})"
            rows.append([MODEL_NAMES[model], at, *(number(metrics[name]) for name in names)])
    title = "Zero-shot vs fine-tuned on test (thresholds tuned on each model's validation scores):"
    return [*_wrap(title), grid(header, rows, n_keys=2)]


def _source_rows(label: str, overall: Mapping, by_source: Mapping, keys: list[str]) -> list[list[str]]:
    rows = []
    for source, results in [("all", overall), *by_source.items()]:
        first = results["threshold_0.5"]
        row = [label, SOURCE_NAMES[source], *_size(first), number(first["roc_auc"]), number(first["pr_auc"])]
        for key in keys:
            metrics = results[f"threshold_{key}"]
            row += [number(metrics["sensitivity"]), number(metrics["specificity"])]
        rows.append(row)
    return rows


def _by_source_lines(report: Mapping) -> list[str]:
    """Per model: all test images, then each source, at 0.5 and the max-F1 threshold."""
    by_source = report.get("by_source") or {}
    if not by_source:
        return []
    keys = [key for key in ("0.5", "max_f1")
            if all(f"threshold_{key}" in report["test"][model] for model in by_source)]
    header = ["model", "source", "images", "nodules", "ROC-AUC", "PR-AUC"]
    for key in keys:
        header += [f"sens@{key}", f"spec@{key}"]
    rows = []
    for model, sources in by_source.items():
        rows += _source_rows(MODEL_NAMES[model], report["test"][model], sources, keys)
    note = ("Test by image source. In NoduLoCC every LIDC image is a nodule: a model that recognises "
            "the source scores well overall but not within NIH; AUC is n/a within a one-class source.")
    return [*_wrap(note), grid(header, rows, n_keys=2)]


def evaluation_text(report: Mapping) -> str:
    """The printed summary of train.py's evaluation (the content of metrics.json)."""
    beta = report.get("beta")
    lines = [f"Test: {report['n_test']} images ({report['n_test_positive']} with nodules); "
             f"thresholds tuned on validation ({report['n_val']} images)."]
    sections = [_per_threshold_lines(report, _main_model(report), beta)]
    if len(report["test"]) > 1:
        sections.append(_comparison_lines(report, beta))
    sections.append(_by_source_lines(report))
    for section in sections:
        if section:
            lines += ["", *section]
    return "\n".join(lines)


def score_text(result: Mapping) -> str:
    """The metrics CLI's table (one column, with intervals) and, when known, its sources."""
    beta = result["config"].get("f_beta")
    beta = None if beta in (None, 1, 1.0) else beta
    column = "value [95% CI]" if result.get("ci") else "value"
    metrics = {**result["metrics"], **result["sensitivity_at_specificity"]}
    names = [name for name in metrics if name not in COUNTS] + list(COUNTS)
    lines = [format_table({column: metrics}, {column: result["ci"]} if result.get("ci") else None,
                          names, beta)]
    by_source = result.get("by_source")
    if by_source:
        names = ["roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1",
                 *(["f_beta"] if beta else [])]
        header = ["source", "images", "nodules", *(metric_label(name, beta) for name in names)]
        rows = [[SOURCE_NAMES[source], *_size(metrics), *(number(metrics[name]) for name in names)]
                for source, metrics in [("all", result["metrics"]), *by_source.items()]]
        threshold = result["metrics"]["threshold"]
        lines += ["", *_wrap(f"By image source, at threshold {threshold:g} (AUC is n/a within a "
                             "one-class source, as LIDC is in NoduLoCC):"), grid(header, rows)]
    return "\n".join(lines)
