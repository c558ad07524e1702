"""Binary classification metrics for p(nodule) scores, and a CLI to score a prediction file.

    python classification_task/metrics.py \
        --labels data/nodulocc/classification_labels.csv \
        --predictions outputs/classification_test_results.csv \
        [--threshold 0.5] [--bootstrap 1000] [--seed 0] [--json outputs/test_metrics.json] \
        [--confidence_of nodule|predicted]

Every function takes binary labels (1 = Nodule) and p(nodule) in [0, 1]; a score
counts as a positive prediction when p >= threshold. Values agree with scikit-learn
(zero_division=0). Undefined values are NaN: both AUCs when only one class is
present, sensitivity without positives, specificity without negatives. With
`beta` given, `f_beta` joins F1 (beta 2 weighs recall higher, 0.5 precision).
When the labels have a LIDC_ID column the CLI also scores each image source
(NIH, LIDC) on its own: every LIDC image is a nodule, so a model that merely
recognises the 16-bit LIDC source scores well overall but not within NIH.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score

from classification_task.common import cli
from classification_task.evaluation.confidence import ConfidenceOf, as_p_nodule
from classification_task.dataset import IMAGE_FOLDERS, DataError, read_csv_table, read_labels_csv
from classification_task.evaluation.report import score_text
from classification_task.common.run_files import write_json_atomic

FLOAT_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision",
                 "f1", "mcc", "roc_auc", "pr_auc", "brier")
COUNT_METRICS = ("tp", "tn", "fp", "fn")
SOURCES = ("nih", "lidc")  # image sources of NoduLoCC, in print order


def _check_inputs(labels: ArrayLike, p_nodule: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    p = np.asarray(p_nodule, dtype=np.float64).ravel()
    if y.size == 0:
        raise ValueError("labels and p_nodule are empty: there is nothing to score.")
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and p_nodule ({p.size}) differ in length.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (No Finding) or 1 (Nodule).")
    if not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("p_nodule must hold finite probabilities in [0, 1].")
    return y.astype(bool), p


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    return np.divide(num, den, out=np.full(num.shape, fill), where=den > 0)


def _check_beta(beta: float | None) -> None:
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta of the F-beta score must be a positive number, got {beta}.")


def _rates(tp: ArrayLike, tn: ArrayLike, fp: ArrayLike, fn: ArrayLike,
           beta: float | None = None) -> dict[str, np.ndarray]:
    """Confusion-matrix metrics, vectorised so the bootstrap reuses the exact same formulas."""
    tp, tn, fp, fn = (np.asarray(c, dtype=np.float64) for c in (tp, tn, fp, fn))
    n_pos, n_neg = tp + fn, tn + fp
    sens, spec = _safe_div(tp, n_pos, math.nan), _safe_div(tn, n_neg, math.nan)
    # Like sklearn's balanced_accuracy_score: the mean recall over the classes present.
    balanced = np.where(n_pos == 0, spec, np.where(n_neg == 0, sens, (sens + spec) / 2))
    # Products of four counts overflow int64 on the full data set: they are floats here.
    mcc_den = np.sqrt((tp + fp) * n_pos * n_neg * (tn + fn))
    rates = {
        "accuracy": (tp + tn) / (n_pos + n_neg),
        "balanced_accuracy": balanced,
        "sensitivity": sens,
        "specificity": spec,
        "precision": _safe_div(tp, tp + fp, 0.0),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn, 0.0),
    }
    if beta is not None:  # like sklearn's fbeta_score: (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)
        b2 = beta**2
        rates["f_beta"] = _safe_div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp, 0.0)
    rates["mcc"] = _safe_div(tp * tn - fp * fn, mcc_den, 0.0)
    return rates


def binary_metrics(labels: ArrayLike, p_nodule: ArrayLike, threshold: float = 0.5,
                   beta: float | None = None) -> dict:
    """All metrics at one threshold: plain floats and ints, NaN where undefined.

    With `beta`, `f_beta` (the F-beta score) follows `f1`.
    """
    _check_beta(beta)
    y, p = _check_inputs(labels, p_nodule)
    pred = p >= threshold
    counts = {"tp": int(np.sum(pred & y)), "tn": int(np.sum(~pred & ~y)),
              "fp": int(np.sum(pred & ~y)), "fn": int(np.sum(~pred & y))}
    rates = {name: float(value) for name, value in _rates(**counts, beta=beta).items()}
    both_classes = 0 < y.sum() < y.size
    # Checked first: sklearn raises (ROC) or warns (PR) on a single class.
    roc_auc = float(roc_auc_score(y, p)) if both_classes else math.nan
    pr_auc = float(average_precision_score(y, p)) if both_classes else math.nan
    brier = float(np.mean((p - y) ** 2))
    return {"threshold": float(threshold), **rates, "roc_auc": roc_auc, "pr_auc": pr_auc,
            "brier": brier, **counts}


def _batched_bincount(index: np.ndarray, size: int) -> np.ndarray:
    """Row-wise bincount of a (rows, k) index array -> (rows, size) counts."""
    offsets = np.arange(index.shape[0])[:, None] * size
    counts = np.bincount((index + offsets).ravel(), minlength=index.shape[0] * size)
    return counts.reshape(index.shape[0], size).astype(np.float64)


def _resample_metrics(p_pos: np.ndarray, p_neg: np.ndarray, pos_idx: np.ndarray, neg_idx: np.ndarray,
                      threshold: float, beta: float | None = None) -> dict[str, np.ndarray]:
    """Float metrics for each row of resample indices into the positives and negatives.

    AUCs come from per-score counts: ROC-AUC is the Mann-Whitney statistic (ties count
    half) and PR-AUC sums recall steps times precision at each distinct score, which
    is exactly what sklearn's average_precision_score computes.
    """
    n_pos, n_neg = p_pos.size, p_neg.size
    tp = (p_pos >= threshold)[pos_idx].sum(axis=1)
    fp = (p_neg >= threshold)[neg_idx].sum(axis=1)
    out = _rates(tp, n_neg - fp, fp, n_pos - tp, beta)
    sq_err = ((1 - p_pos) ** 2)[pos_idx].sum(axis=1) + (p_neg**2)[neg_idx].sum(axis=1)
    out["brier"] = sq_err / (n_pos + n_neg)
    nan = np.full(pos_idx.shape[0], math.nan)
    out["roc_auc"], out["pr_auc"] = nan, nan.copy()
    if n_pos == 0 or n_neg == 0:
        return out
    scores, inverse = np.unique(np.concatenate([p_pos, p_neg]), return_inverse=True)
    pos_at = _batched_bincount(inverse[:n_pos][pos_idx], scores.size)  # ascending scores
    neg_at = _batched_bincount(inverse[n_pos:][neg_idx], scores.size)
    neg_below_plus_half_ties = np.cumsum(neg_at, axis=1) - neg_at / 2
    out["roc_auc"] = (pos_at * neg_below_plus_half_ties).sum(axis=1) / (n_pos * n_neg)
    tp_ge = np.cumsum(pos_at[:, ::-1], axis=1)[:, ::-1]
    fp_ge = np.cumsum(neg_at[:, ::-1], axis=1)[:, ::-1]
    out["pr_auc"] = (pos_at * _safe_div(tp_ge, tp_ge + fp_ge, 0.0)).sum(axis=1) / n_pos
    return out


def bootstrap_ci(labels: ArrayLike, p_nodule: ArrayLike, threshold: float = 0.5,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 beta: float | None = None) -> dict[str, tuple[float, float]]:
    """Percentile (1 - alpha) intervals of each float metric over stratified resamples.

    Positives and negatives are resampled separately so every resample keeps the
    class counts (a rare class would otherwise leave some resamples without positives).
    With `beta`, `f_beta` gets an interval too.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}.")
    _check_beta(beta)
    y, p = _check_inputs(labels, p_nodule)
    p_pos, p_neg = p[y], p[~y]
    rng = np.random.default_rng(seed)
    # Chunks of resamples keep the (resamples x items) arrays near 32 MB each.
    chunk = max(1, min(n_boot, 4_000_000 // max(y.size, 1)))
    names = FLOAT_METRICS if beta is None else (*FLOAT_METRICS, "f_beta")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        pos_idx = rng.integers(0, max(p_pos.size, 1), size=(rows, p_pos.size))
        neg_idx = rng.integers(0, max(p_neg.size, 1), size=(rows, p_neg.size))
        for name, values in _resample_metrics(p_pos, p_neg, pos_idx, neg_idx, threshold, beta).items():
            parts[name].append(values)
    intervals = {}
    for name in names:
        values = np.concatenate(parts[name])
        values = values[~np.isnan(values)]
        if values.size == 0:
            intervals[name] = (math.nan, math.nan)
            continue
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        intervals[name] = (float(low), float(high))
    return intervals


def _counts_per_threshold(labels: ArrayLike, p_nodule: ArrayLike):
    """Candidate thresholds (the distinct scores, ascending) with tp and tn at each."""
    y, p = _check_inputs(labels, p_nodule)
    p_pos, p_neg = np.sort(p[y]), np.sort(p[~y])
    thresholds = np.unique(p)
    tp = p_pos.size - np.searchsorted(p_pos, thresholds, side="left")
    tn = np.searchsorted(p_neg, thresholds, side="left")
    return thresholds, tp, tn, p_pos.size, p_neg.size


def _tn_needed(target: float, n_neg: int) -> int:
    # Compared as counts: 1 - fp / n in floating point can miss an exact target.
    return math.ceil(target * n_neg - 1e-9)


def _highest_argmax(values: np.ndarray) -> int:
    return values.size - 1 - int(np.argmax(values[::-1]))


def select_thresholds(labels_val: ArrayLike, p_val: ArrayLike,
                      target_specificities: Sequence[float] = (0.99, 0.995),
                      beta: float | None = None) -> dict[str, float]:
    """Thresholds tuned on validation, to apply unchanged to the test set.

    `max_f1`: the distinct score maximising F1 (the highest such score on ties);
    with `beta` other than 1, `max_f_beta` likewise for the F-beta score.
    `spec_{target}` (e.g. `spec_0.99`): the lowest distinct score reaching
    specificity >= target; if no score does, the next float above the highest
    score, so that nothing is predicted positive.
    """
    _check_beta(beta)
    thresholds, tp, tn, n_pos, n_neg = _counts_per_threshold(labels_val, p_val)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Threshold selection needs both classes in the validation labels.")
    fp = n_neg - tn
    f1 = _safe_div(2 * tp, tp + fp + n_pos, 0.0)
    selected = {"max_f1": float(thresholds[_highest_argmax(f1)])}
    if beta is not None and beta != 1:
        f_beta = _rates(tp, tn, fp, n_pos - tp, beta)["f_beta"]
        selected["max_f_beta"] = float(thresholds[_highest_argmax(f_beta)])
    for target in target_specificities:
        if not 0 < target <= 1:
            raise ValueError(f"Target specificities must lie in (0, 1], got {target}.")
        reached = np.flatnonzero(tn >= _tn_needed(target, n_neg))
        value = thresholds[reached[0]] if reached.size else np.nextafter(thresholds[-1], np.inf)
        selected[f"spec_{target:g}"] = float(value)
    return selected


def sensitivity_at_specificity(labels: ArrayLike, p_nodule: ArrayLike,
                               specificities: Sequence[float] = (0.95, 0.99, 0.995)
                               ) -> dict[str, float]:
    """`sens_at_spec_{target}`: the highest ROC sensitivity with specificity >= target."""
    thresholds, tp, tn, n_pos, n_neg = _counts_per_threshold(labels, p_nodule)
    if n_pos == 0 or n_neg == 0:
        return {f"sens_at_spec_{target:g}": math.nan for target in specificities}
    result = {}
    for target in specificities:
        reached = tp[tn >= _tn_needed(target, n_neg)]
        # The ROC curve starts at (0, 0): above every score, sensitivity 0 at specificity 1.
        result[f"sens_at_spec_{target:g}"] = float(reached.max()) / n_pos if reached.size else 0.0
    return result


def image_sources(lidc_ids: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """"lidc" for an image with a LIDC_ID or under the LIDC folder, else "nih"."""
    lidc_folder = IMAGE_FOLDERS[1]
    return np.array(["lidc" if str(lidc_id).strip() or lidc_folder in Path(str(name)).parts[:-1]
                     else "nih" for lidc_id, name in zip(lidc_ids, names, strict=True)])


def metrics_by_source(labels: ArrayLike, p_nodule: ArrayLike, sources: ArrayLike,
                      threshold: float = 0.5, beta: float | None = None) -> dict[str, dict]:
    """`binary_metrics` within each source that has images ({"nih": {...}, "lidc": {...}}).

    A source holding one class only (LIDC: all nodules) gets NaN AUCs: within it,
    nothing separates the classes, which is what a shortcut check must show.
    """
    y, p = np.asarray(labels).ravel(), np.asarray(p_nodule, dtype=np.float64).ravel()
    sources = np.asarray(sources).ravel()
    return {source: binary_metrics(y[sources == source], p[sources == source], threshold, beta)
            for source in SOURCES if np.any(sources == source)}


# ----------------------------------------------------------------------------- CLI


@dataclass
class ScoreConfig:
    labels: Path = cli.arg(cli.REQUIRED, "classification_labels.csv (file_name,label,LIDC_ID)")
    predictions: Path = cli.arg(cli.REQUIRED, "classification_test_results.csv (file_name,label,confidence)")
    threshold: float = cli.arg(0.5, "predict Nodule when confidence >= threshold")
    f_beta: float = cli.arg(1.0, "also report the F-beta score with this beta (2 favours recall, 0.5 "
                                 "precision); 1 = F1 alone")
    bootstrap: int = cli.arg(1000, "stratified bootstrap resamples for 95% intervals; 0 disables")
    seed: int = cli.arg(0, "bootstrap seed")
    json_path: Path | None = cli.arg(None, "also write metrics, intervals and counts to this JSON file", flag="json")
    confidence_of: ConfidenceOf | None = cli.arg(
        None, "what confidence holds: nodule = p(nodule); predicted = the confidence of the predicted label; "
        "unset: p(nodule), refused when the label column contradicts it")

    def __post_init__(self):
        self.labels, self.predictions = Path(self.labels), Path(self.predictions)
        self.json_path = Path(self.json_path) if self.json_path is not None else None
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must lie in [0, 1], got {self.threshold}.")
        if self.bootstrap < 0:
            raise ValueError(f"--bootstrap must be 0 (off) or a number of resamples, got {self.bootstrap}.")
        if not (math.isfinite(self.f_beta) and self.f_beta > 0):
            raise ValueError(f"--f_beta must be a positive number, got {self.f_beta}.")

    @property
    def beta(self) -> float | None:
        """The F-beta's beta, or None when F1 says it all."""
        return None if self.f_beta == 1 else self.f_beta


def load_predictions(path: Path, confidence_of: ConfidenceOf | None = None) -> pd.Series:
    """`classification_test_results.csv` (file_name,label,confidence) -> Series file_name -> p(nodule)."""
    frame = read_csv_table(path, ("file_name", "confidence"), "pass an existing CSV file with --predictions")
    confidence = pd.to_numeric(frame.set_index("file_name")["confidence"], errors="coerce")
    bad = confidence.index[~confidence.between(0.0, 1.0)]  # NaN from coercion fails too
    if len(bad):
        raise DataError(f"{path} has a confidence outside [0, 1] or not a number (first at "
                        f"{bad[0]}); write p(nodule) as a number between 0 and 1.")
    labels = frame.set_index("file_name")["label"] if "label" in frame.columns else None
    return as_p_nodule(confidence.astype(float), labels, path, confidence_of)


def _match_base_names(predictions, labels):
    """Compare base names when the labels use bare names and the predictions do not.

    `inference.py --recursive` names files with their sub-folder
    (nih_filtered_images/x.png), while the challenge labels list bare names.
    """
    if any("/" in name for name in labels.index):
        return predictions
    base_names = predictions.index.map(lambda name: name.rsplit("/", 1)[-1])
    return predictions if base_names.duplicated().any() else predictions.set_axis(base_names)


def label_sources(path: Path, names: pd.Index) -> np.ndarray | None:
    """"nih" / "lidc" for each of `names` in labels CSV `path`, or None without a LIDC_ID column."""
    if "LIDC_ID" not in pd.read_csv(path, nrows=0, dtype=str).columns:
        return None
    lidc_ids = read_labels_csv(path, "pass an existing CSV file with --labels").set_index("file_name")["lidc_id"]
    return image_sources(lidc_ids.loc[names], names)


def score_files(config: ScoreConfig) -> dict:
    """Metrics, intervals and match counts for the files present in both CSVs; per source
    (`by_source`, else None) when the labels have a LIDC_ID column."""
    labels = read_labels_csv(config.labels, "pass an existing CSV file with --labels")
    labels = labels.set_index("file_name")["label"]
    predictions = _match_base_names(load_predictions(config.predictions, config.confidence_of), labels)
    common = labels.index.intersection(predictions.index)
    if common.empty:
        raise DataError(f"none of the file names in {config.predictions} appear in "
                        f"{config.labels}; check that both files describe the same images.")
    y, p = labels.loc[common].to_numpy(), predictions.loc[common].to_numpy()
    counts = {"scored": int(common.size), "nodule": int(y.sum()), "no_finding": int((1 - y).sum()),
              "labelled_without_prediction": int(labels.index.difference(common).size),
              "predicted_without_label": int(predictions.index.difference(common).size)}
    ci = (bootstrap_ci(y, p, config.threshold, config.bootstrap, config.seed, beta=config.beta)
          if config.bootstrap else None)
    sources = label_sources(config.labels, common)
    by_source = None if sources is None else metrics_by_source(y, p, sources, config.threshold, config.beta)
    return {"config": asdict(config), "counts": counts,
            "metrics": binary_metrics(y, p, config.threshold, config.beta), "ci": ci,
            "sensitivity_at_specificity": sensitivity_at_specificity(y, p), "by_source": by_source}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(ScoreConfig, __doc__, argv)
    if config is None:
        return 2
    try:
        result = score_files(config)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = result["counts"]
    print(f"scored images: {counts['scored']} ({counts['nodule']} Nodule, "
          f"{counts['no_finding']} No Finding)")
    print(f"labelled images without a prediction: {counts['labelled_without_prediction']}")
    print(f"predicted images without a label (ignored): {counts['predicted_without_label']}")
    print(score_text(result))
    if config.json_path is not None:
        print(f"wrote {write_json_atomic(config.json_path, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
