"""Scoring the heatmap localizer on a split: candidate peaks, thresholds tuned on validation.

The model is run once per split; every peak above `CANDIDATE_FLOOR` is kept
with its confidence, so any `--min_confidence` can be applied afterwards
without running the model again. Two thresholds are tuned on validation and
applied unchanged to test: the one with the highest F1 at the tolerant
distance, and the one with the highest count accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from localization_task.metrics import EvalImages, match_points

CANDIDATE_FLOOR = 0.05  # peaks below this never count, whatever the threshold
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.01), 2)


@dataclass
class SplitPeaks:
    """Candidate peaks of one split, aligned with its evaluation rows."""

    file_names: list[str]
    gt_xy: list[np.ndarray]  # (k, 2) original pixels
    peak_xy: list[np.ndarray]  # (m, 2) original pixels, strongest first
    peak_conf: list[np.ndarray]  # (m,)
    size_px: np.ndarray  # (n, 2) width, height

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
    """Gather the trainer's prediction arrays back into per-image peaks, in frame order.

    `peaks` is (N, max_points, 3) of x, y, confidence in original pixels,
    NaN-padded; `boxes` (N, 5) the letterboxes (width first); `indices` (N,)
    the frame row of each prediction (several processes may repeat a row).
    """
    order = {int(i): n for n, i in enumerate(indices)}
    missing = sorted(set(range(len(frame))) - set(order))
    if missing:
        raise ValueError(f"no prediction came back for {len(missing)} evaluation image(s).")
    rows = [order[i] for i in range(len(frame))]
    peak_rows = [peaks[r][~np.isnan(peaks[r][:, 2])] for r in rows]
    return SplitPeaks(
        file_names=frame["file_name"].tolist(),
        gt_xy=[np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in frame["points_px"]],
        peak_xy=[p[:, :2].astype(np.float64) for p in peak_rows],
        peak_conf=[p[:, 2].astype(np.float64) for p in peak_rows],
        size_px=np.asarray(boxes)[rows][:, :2].astype(np.int64),
    )


def f1_and_counts(split: SplitPeaks, min_confidence: float, dist_frac: float) -> dict:
    """Micro F1 at one distance threshold and count accuracy three ways, at one confidence."""
    xy, _ = split.above(min_confidence)
    diag_px = np.hypot(split.size_px[:, 0], split.size_px[:, 1])
    tp = sum(len(match_points(p, g, dist_frac * d)["pred_idx"]) for p, g, d in zip(xy, split.gt_xy, diag_px))
    n_pred = np.array([len(p) for p in xy])
    n_gt = np.array([len(g) for g in split.gt_xy])
    denominator = 2 * tp + (n_pred.sum() - tp) + (n_gt.sum() - tp)
    correct = n_pred == n_gt
    return {
        "f1": 2 * tp / denominator if denominator else float("nan"),
        "count_accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "count_accuracy_with_nodules": float(correct[n_gt > 0].mean()) if (n_gt > 0).any() else float("nan"),
        "count_accuracy_without_nodules": float(correct[n_gt == 0].mean()) if (n_gt == 0).any() else float("nan"),
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
