"""Scoring the heatmap localizer on a split: candidate peaks, thresholds tuned on validation.

The model is run once per split; every peak above `peaks.CANDIDATE_FLOOR` is kept
with its confidence, so any `--min_confidence` can be applied afterwards
without running the model again. Two thresholds are tuned on validation and
applied unchanged to test: the one with the highest F1 at the tolerant
distance, and the one with the highest count accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from localization_task.heatmap.peaks import iter_peaks
from localization_task.metrics import EvalConfig, EvalImages, evaluate, match_points, write_evaluation
from localization_task.evaluation.plots import write_test_pictures
from localization_task.evaluation.report import format_table
from localization_task.evaluation.predictions import (
    PREDICTIONS_JSONL, RESULTS_CSV, write_records_jsonl, write_results_csv,
)

THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.01), 2)
OPERATING_POINTS = {"count": "count accuracy", "f1": "F1"}  # which tuned threshold the predictions use


def predict_split(model, frame: pd.DataFrame, dataset, batch_size: int, max_points: int,
                  num_workers: int = 0, desc: str = "scoring") -> tuple[SplitPeaks, list[tuple[str, str]]]:
    """Candidate peaks for the rows of `frame` (the rows of `dataset`), and the unreadable (file, reason)."""
    results = list(iter_peaks(model, dataset, batch_size, max_points, num_workers, desc))
    skipped = [(frame["file_name"].iloc[i], reason) for r in results for i, reason in r["skipped"]]
    parts = [r for r in results if len(r["index"])]
    if not parts:
        raise ValueError("no image of the split could be scored.")
    arrays = (np.concatenate([r[k] for r in parts]) for k in ("peaks", "box", "index"))
    return split_peaks(frame, *arrays), skipped


@dataclass
class SplitPeaks:
    """Candidate peaks of one split, aligned with its evaluation rows."""

    file_names: list[str]
    gt_xy: list[np.ndarray]  # (k, 2) original pixels
    peak_xy: list[np.ndarray]  # (m, 2) original pixels, strongest first
    peak_conf: list[np.ndarray]  # (m,)
    size_px: np.ndarray  # (n, 2) width, height
    weight: np.ndarray | None = None  # (n,) images each row stands for (a sampled negative: several)

    def above(self, min_confidence: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Peaks (xy, confidence) at or above `min_confidence`, per image."""
        keep = [conf >= min_confidence for conf in self.peak_conf]
        return [xy[k] for xy, k in zip(self.peak_xy, keep)], [c[k] for c, k in zip(self.peak_conf, keep)]

    def eval_images(self, min_confidence: float) -> EvalImages:
        """The evaluator's input at one threshold."""
        xy, conf = self.above(min_confidence)
        return EvalImages(list(self.file_names), list(self.gt_xy), xy, conf,
                          self.size_px[:, 0].astype(float), self.size_px[:, 1].astype(float))


def split_peaks(frame: pd.DataFrame, peaks: np.ndarray, boxes: np.ndarray, indices: np.ndarray) -> SplitPeaks:
    """Gather the prediction arrays back into per-image peaks, in frame order.

    `peaks` is (N, max_points, 3) of x, y, confidence in original pixels,
    NaN-padded; `boxes` (N, 5) the letterboxes (width first); `indices` (N,)
    the frame row of each prediction (several processes may repeat a row).
    Rows without a prediction (unreadable images) are left out.
    """
    order = {int(i): n for n, i in enumerate(indices)}
    present = [i for i in range(len(frame)) if i in order]
    if not present:
        raise ValueError("no image of the split could be scored.")
    rows = [order[i] for i in present]
    peak_rows = [peaks[r][~np.isnan(peaks[r][:, 2])] for r in rows]
    frame = frame.iloc[present]
    return SplitPeaks(
        file_names=frame["file_name"].tolist(),
        gt_xy=[np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in frame["points_px"]],
        peak_xy=[p[:, :2].astype(np.float64) for p in peak_rows],
        peak_conf=[p[:, 2].astype(np.float64) for p in peak_rows],
        size_px=np.asarray(boxes)[rows][:, :2].astype(np.int64),
        weight=frame["weight"].to_numpy(dtype=np.float64) if "weight" in frame else None,
    )


def _weighted_mean(values: np.ndarray, weight: np.ndarray) -> float:
    return float(np.average(values, weights=weight)) if weight.sum() > 0 else float("nan")


def f1_and_counts(split: SplitPeaks, min_confidence: float, dist_frac: float) -> dict:
    """Micro F1 at one distance threshold and count accuracy three ways, at one confidence.

    Each image counts `split.weight` times (a sampled negative stands for the
    negatives left out), so a sample gives the figures of the whole split."""
    xy, _ = split.above(min_confidence)
    diag_px = np.hypot(split.size_px[:, 0], split.size_px[:, 1])
    weight = np.ones(len(xy)) if split.weight is None else split.weight
    tp = np.array([len(match_points(p, g, dist_frac * d)["pred_idx"]) for p, g, d in zip(xy, split.gt_xy, diag_px)])
    n_pred = np.array([len(p) for p in xy])
    n_gt = np.array([len(g) for g in split.gt_xy])
    tp_w, fp_w, fn_w = (float(np.dot(weight, v)) for v in (tp, n_pred - tp, n_gt - tp))
    denominator = 2 * tp_w + fp_w + fn_w
    correct = (n_pred == n_gt).astype(float)
    return {
        "f1": 2 * tp_w / denominator if denominator else float("nan"),
        "count_accuracy": _weighted_mean(correct, weight) if len(correct) else float("nan"),
        "count_accuracy_with_nodules": _weighted_mean(correct[n_gt > 0], weight[n_gt > 0]),
        "count_accuracy_without_nodules": _weighted_mean(correct[n_gt == 0], weight[n_gt == 0]),
    }


def tune_min_confidence(split: SplitPeaks, dist_frac: float, grid=THRESHOLD_GRID) -> dict:
    """Thresholds maximising F1 (at `dist_frac`) and count accuracy; the lowest on ties."""
    scores = [f1_and_counts(split, t, dist_frac) for t in grid]
    f1 = np.nan_to_num([s["f1"] for s in scores], nan=-1.0)
    count = np.nan_to_num([s["count_accuracy"] for s in scores], nan=-1.0)
    best_f1, best_count = int(np.argmax(f1)), int(np.argmax(count))
    return {
        "min_confidence_f1": float(grid[best_f1]),
        "min_confidence_count": float(grid[best_count]),
        "at_min_confidence_f1": scores[best_f1],
        "at_min_confidence_count": scores[best_count],
    }


def prediction_records(split: SplitPeaks, min_confidence: float) -> dict[str, dict]:
    """predictions.jsonl records (as written by inference) at one threshold."""
    xy, conf = split.above(min_confidence)
    return {
        name: {"file_name": name, "width": int(size[0]), "height": int(size[1]),
               "points": [{"x": float(x), "y": float(y), "confidence": float(c)} for (x, y), c in zip(p, k)]}
        for name, size, p, k in zip(split.file_names, split.size_px, xy, conf)
    }


def negatives_scored(split: SplitPeaks) -> int:
    """How many images without a nodule a split was scored on."""
    return sum(len(g) == 0 for g in split.gt_xy)


def report_gated(test: SplitPeaks, min_confidence: float, gate: dict[str, bool], cfg: EvalConfig) -> dict:
    """Localization after the classifier's gate, on the test images that neither model trained on.

    `gate` holds the classifier's test images ({file_name: gated}, from its
    test predictions): a test image of this run without a row there may have
    trained the classifier, so it is left out. Gated images lose their peaks.
    """
    keep = [i for i, name in enumerate(test.file_names) if name in gate]
    if not keep:
        raise ValueError("--gate_csv has a row for none of the test images: pass the classifier's "
                         "test_predictions.csv from a run on the same split.csv (--split_file).")
    xy, conf = test.above(min_confidence)
    closed = [gate[test.file_names[i]] for i in keep]
    images = EvalImages([test.file_names[i] for i in keep], [test.gt_xy[i] for i in keep],
                        [xy[i][:0] if c else xy[i] for i, c in zip(keep, closed)],
                        [conf[i][:0] if c else conf[i] for i, c in zip(keep, closed)],
                        test.size_px[keep, 0].astype(float), test.size_px[keep, 1].astype(float))
    results, _ = evaluate(images, cfg)
    print(f"\nGated by the classifier: {len(keep)} test images that neither model trained on "
          f"({sum(closed)} gated as No Finding; {len(test.file_names) - len(keep)} test images without a "
          "--gate_csv row left out):")
    print(format_table(results, list(cfg.thresholds)))
    return {"n_gated": sum(closed), "n_left_out": len(test.file_names) - len(keep), **results}


def report_test(model, val: SplitPeaks, test: SplitPeaks, thresholds_frac: dict[str, float],
                out_dir: Path, extra: dict, operating_point: str = "count", gate: dict | None = None,
                paths: dict[str, str] | None = None, n_overlays: int = 0) -> dict:
    """Tune the thresholds on validation, score test with them, print and write everything.

    Writes eval_summary.json and per_image_metrics.csv (the evaluator's
    schema), plus the test predictions as localization_test_results.csv and
    predictions.jsonl, all at the `operating_point` threshold ("count": tuned
    for count accuracy, what the challenge ranks; "f1"). Stores both
    thresholds in `model.config`, so inference can use either. With `gate`
    (see `report_gated`) the summary also holds the gated localization.
    It also draws froc.png and, given the test images' `paths`, overlays of
    `n_overlays` of them (see plots.py).
    """
    tolerant = max(thresholds_frac.values())
    tuned = tune_min_confidence(val, tolerant)
    model.config.min_confidence_f1 = tuned["min_confidence_f1"]
    model.config.min_confidence_count = tuned["min_confidence_count"]
    used = tuned[f"min_confidence_{operating_point}"]
    cfg = EvalConfig(thresholds=dict(thresholds_frac))
    images = test.eval_images(used)
    results, matches = evaluate(images, cfg)
    n_negatives = {"val": negatives_scored(val), "test": negatives_scored(test)}
    print(f"\nScored: validation {len(val.file_names)} images ({n_negatives['val']} without nodules), "
          f"test {len(test.file_names)} ({n_negatives['test']} without nodules).")
    print(f"Test split at operating point {operating_point!r}: peaks kept at confidence >= {used:g} "
          f"(tuned on validation for {OPERATING_POINTS[operating_point]}):")
    print(format_table(results, list(thresholds_frac)))
    at = {name: f1_and_counts(test, tuned[f"min_confidence_{name}"], tolerant) for name in OPERATING_POINTS}
    for name, scores in at.items():
        print(f"At confidence >= {tuned[f'min_confidence_{name}']:g} (best validation {OPERATING_POINTS[name]}): "
              f"tolerant F1 {scores['f1']:.3f}, count accuracy {scores['count_accuracy']:.3f}")
    summary = {"operating_point": operating_point, "min_confidence": used,
               "min_confidence_f1": tuned["min_confidence_f1"],
               "min_confidence_count": tuned["min_confidence_count"],
               "n_negatives_scored": n_negatives, "n_images_scored": {"val": len(val.file_names)},
               "validation": {k: tuned[k] for k in ("at_min_confidence_f1", "at_min_confidence_count")},
               **{f"test_at_min_confidence_{name}": scores for name, scores in at.items()}, **extra}
    if gate is not None:
        summary["gated"] = report_gated(test, used, gate, cfg)
    write_evaluation(out_dir, images, cfg, results, matches, extra=summary)
    records = prediction_records(test, used)
    write_results_csv(out_dir / RESULTS_CSV, records, test.file_names)
    write_records_jsonl(out_dir / PREDICTIONS_JSONL, records, test.file_names)
    write_test_pictures(out_dir, results, images, matches, thresholds_frac, paths or {}, n_overlays if paths else 0)
    return results
