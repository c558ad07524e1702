"""Localization evaluation: threshold-aware Hungarian matching, count accuracy, FROC.

    python localization_task/metrics.py \\
        --predictions outputs/localization/predictions.jsonl \\
        --ground_truth data/nodulocc/localization_labels.csv \\
        --image_roots data/nodulocc/lidc_png_16_bit data/nodulocc/nih_filtered_images \\
        --output_dir outputs/localization_eval --overlay_dir outputs/localization_eval/overlays

(``python -m localization_task.metrics ...`` works too.) Predictions are a
``localization_test_results.csv`` (``file_name,x,y,confidence``) or the
CheXagent-2 ``predictions.jsonl``; see ``localization_task/eval_io.py``. The
scores are pure functions in ``localization_task/point_metrics.py`` (imported
here too).

Per image and per distance threshold (a fraction of the image diagonal:
``tight`` 0.02 and ``tolerant`` 0.05 by default), a prediction may match a
ground-truth point only within the threshold (``dist <= threshold``); among
such one-to-one matchings we take the one with the most pairs, then the least
total distance. The evaluated images are the union of the files named in the
ground truth and the predictions (plus ``--image_list`` / scanned
``--image_roots`` when given, as images with no nodule).

Edge cases, by design: precision is NaN when there are no predictions, recall
and PCK are NaN when there are no ground-truth points; F1 = 2TP / (2TP + FP +
FN), so it is 0 (not NaN) when one side is empty and NaN only when both are;
macro averages are over the images where the per-image value is defined;
radial errors are NaN when nothing matched (std is the population std,
ddof=0). NaN is written as null in ``eval_summary.json``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from localization_task import cli
from localization_task.dataset import DataError, read_ground_truth
from localization_task.eval_io import ImageFinder, lookup_image_size, read_image_list, read_predictions
from localization_task.point_metrics import (  # noqa: F401  (re-exported: callers import them from here)
    FROC_FP_PER_IMAGE, NAN, count_accuracy, detection_metrics, froc, match_points, precision_recall_f1,
    radial_error_stats,
)
from localization_task.run_files import run_info, write_json_atomic, write_text_atomic

DEFAULT_THRESHOLDS = {"tight": 0.02, "tolerant": 0.05}


# ------------------------------------------------------------------ command line

@dataclass
class EvalConfig:
    predictions: str = cli.required("localization_test_results.csv or predictions.jsonl")
    ground_truth: str = cli.required("localization_labels.csv (file_name,x,y)")
    image_roots: list[str] = cli.arg([], "folders holding the images", action="extend")
    output_dir: str = cli.arg("outputs/localization_eval", "where eval_summary.json and per_image_metrics.csv go")
    overlay_dir: str | None = cli.arg(None, "write PNG overlays of GT, predictions and matches here")
    tight_frac: float | None = cli.arg(None, "tight threshold, fraction of diagonal (0.02)")
    tolerant_frac: float | None = cli.arg(None, "tolerant threshold (0.05)")
    # After __post_init__: {name: fraction of the diagonal}; on the command line NAME=FRAC pairs.
    thresholds: dict[str, float] | None = cli.arg(
        None, "named thresholds, e.g. tight=0.02 tolerant=0.05; replace --tight_frac/--tolerant_frac",
        nargs="+", type=str, metavar="NAME=FRAC",
    )
    froc_threshold: str | None = cli.arg(None, "threshold name used for FROC (default tolerant, else the largest)")
    pixel_spacing_mm: float | None = cli.arg(None, "also report radial errors in mm")
    image_list: str | None = cli.arg(None, "text/CSV file of all evaluated file names")
    scan_image_roots: bool = cli.arg(
        False, "evaluate every image under --image_roots (no GT, no prediction: a negative)"
    )

    def __post_init__(self):
        self.thresholds = resolve_thresholds(self.thresholds, self.tight_frac, self.tolerant_frac)
        for name, frac in self.thresholds.items():
            if not name.isidentifier():
                raise ValueError(f"Threshold name {name!r} must be a plain identifier such as tight.")
            if not 0 < frac <= 1:
                raise ValueError(f"Threshold {name}={frac} must be a fraction of the diagonal in (0, 1].")
        if self.froc_threshold is None:
            by_frac = max(self.thresholds, key=self.thresholds.get)
            self.froc_threshold = "tolerant" if "tolerant" in self.thresholds else by_frac
        if self.froc_threshold not in self.thresholds:
            names = ", ".join(self.thresholds)
            raise ValueError(f"--froc_threshold {self.froc_threshold} is not one of {names}.")
        if self.pixel_spacing_mm is not None and not self.pixel_spacing_mm > 0:
            raise ValueError(f"--pixel_spacing_mm must be positive, got {self.pixel_spacing_mm}.")
        if (self.scan_image_roots or self.overlay_dir) and not self.image_roots:
            raise ValueError("--scan_image_roots and --overlay_dir need the image folders "
                             "given with --image_roots.")


def resolve_thresholds(thresholds: dict | list[str] | None, tight_frac: float | None,
                       tolerant_frac: float | None) -> dict[str, float]:
    """The evaluated thresholds: ``thresholds`` (a dict, or NAME=FRAC pairs), else tight/tolerant."""
    if thresholds is not None and (tight_frac is not None or tolerant_frac is not None):
        raise ValueError("Use either --thresholds or --tight_frac/--tolerant_frac, not both.")
    if thresholds is None:
        return {"tight": DEFAULT_THRESHOLDS["tight"] if tight_frac is None else tight_frac,
                "tolerant": DEFAULT_THRESHOLDS["tolerant"] if tolerant_frac is None else tolerant_frac}
    thresholds = parse_thresholds(thresholds) if isinstance(thresholds, list) else dict(thresholds)
    if not thresholds:
        raise ValueError("Give at least one threshold.")
    return thresholds


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """``["tight=0.02", "tolerant=0.05"]`` -> ``{"tight": 0.02, "tolerant": 0.05}``."""
    out = {}
    for item in items:
        name, sep, frac = item.partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = None
        if not sep or value is None or name in out:
            raise ValueError(f"--thresholds takes distinct name=fraction pairs such as tight=0.02, "
                             f"got {item!r}.")
        out[name] = value
    return out


@dataclass
class EvalImages:
    """Aligned per-image arrays; width/height are NaN for images without any point."""

    file_names: list[str]
    gt_xy: list[np.ndarray]
    pred_xy: list[np.ndarray]
    pred_conf: list[np.ndarray]
    width_px: np.ndarray
    height_px: np.ndarray
    finder: ImageFinder | None = None


def load_inputs(cfg: EvalConfig) -> EvalImages:
    gt = read_ground_truth(cfg.ground_truth)
    preds = read_predictions(cfg.predictions)
    finder = ImageFinder(cfg.image_roots) if cfg.image_roots else None
    names = set(gt) | set(preds.xy)
    if cfg.image_list:
        names |= set(read_image_list(cfg.image_list))
    if cfg.scan_image_roots:
        names |= set(finder.all_names())
    names = sorted(names)
    empty = np.zeros((0, 2))
    gt_xy = [gt.get(n, empty) for n in names]
    pred_xy = [preds.xy.get(n, empty) for n in names]
    pred_conf = [preds.confidence.get(n, np.zeros(0)) for n in names]
    sizes = np.full((len(names), 2), np.nan)
    for i, name in enumerate(names):
        if len(gt_xy[i]) or len(pred_xy[i]):
            sizes[i] = lookup_image_size(name, preds.sizes, finder)
    return EvalImages(names, gt_xy, pred_xy, pred_conf, sizes[:, 0], sizes[:, 1], finder)


def evaluate(images: EvalImages, cfg: EvalConfig) -> tuple[dict, dict]:
    """All metrics as one JSON-ready dict, plus the per-threshold matches per image."""
    diag_px = np.hypot(images.width_px, images.height_px)
    n_gt = np.array([len(g) for g in images.gt_xy], dtype=int)
    n_pred = np.array([len(p) for p in images.pred_xy], dtype=int)
    results = {"n_images": len(n_gt), "n_images_with_gt": int((n_gt > 0).sum()),
               "n_gt_points": int(n_gt.sum()), "n_pred_points": int(n_pred.sum())}
    matches = {}
    for name, frac in cfg.thresholds.items():
        matches[name] = [match_points(p, g, frac * d) for p, g, d in zip(images.pred_xy, images.gt_xy, diag_px)]
        results[name] = {"threshold_frac": frac,
                         **detection_metrics(matches[name], n_gt, n_pred, diag_px, cfg.pixel_spacing_mm)}
    results.update(count_accuracy(n_gt, n_pred))
    froc_px = cfg.thresholds[cfg.froc_threshold] * diag_px
    results["froc"] = {"threshold": cfg.froc_threshold,
                       **froc(images.gt_xy, images.pred_xy, images.pred_conf, froc_px)}
    return results, matches


def per_image_table(images: EvalImages, matches: dict) -> pd.DataFrame:
    n_gt = np.array([len(g) for g in images.gt_xy], dtype=int)
    n_pred = np.array([len(p) for p in images.pred_xy], dtype=int)
    table = pd.DataFrame({"file_name": images.file_names,
                          "width_px": pd.array(images.width_px, dtype="Int64"),
                          "height_px": pd.array(images.height_px, dtype="Int64"),
                          "n_gt": n_gt, "n_pred": n_pred,
                          "count_correct": n_gt == n_pred})
    for name, per_image in matches.items():
        tp = np.array([len(m["pred_idx"]) for m in per_image], dtype=int)
        scores = [precision_recall_f1(*c) for c in zip(tp, n_pred - tp, n_gt - tp)]
        table[f"{name}_tp"], table[f"{name}_fp"], table[f"{name}_fn"] = tp, n_pred - tp, n_gt - tp
        for key in ("precision", "recall", "f1"):
            table[f"{name}_{key}"] = [s[key] for s in scores]
        table[f"{name}_mre_px"] = [m["dist_px"].mean() if len(m["dist_px"]) else NAN for m in per_image]
    return table


TABLE_SKIP = {"threshold_frac"}


def format_table(results: dict, names: list[str]) -> str:
    """One aligned table (rows = metrics, columns = thresholds), then count accuracy and FROC."""
    def cell(v):
        if isinstance(v, (int, np.integer)):
            return str(v)
        return "n/a" if v is None or np.isnan(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"

    rows = [("threshold (frac of diag)", [f"{results[n]['threshold_frac']:g}" for n in names])]
    rows += [(k, [cell(results[n][k]) for n in names]) for k in results[names[0]] if k not in TABLE_SKIP]
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(n), *(len(r[1][j]) for r in rows)) for j, n in enumerate(names)]
    lines = ["  ".join([" " * width0] + [n.rjust(w) for n, w in zip(names, widths)])]
    lines += ["  ".join([k.ljust(width0)] + [v.rjust(w) for v, w in zip(vals, widths)]) for k, vals in rows]
    lines.append(f"count accuracy: {cell(results['count_accuracy'])} "
                 f"({results['n_count_correct']}/{results['n_count_images']} images)")
    f = results["froc"]
    if f["defined"]:
        pairs = ", ".join(f"{r:g}: {s:.3f}" for r, s in zip(f["fp_per_image_targets"], f["sensitivity"]))
        lines.append(f"FROC ({f['threshold']}) sensitivity at FP/image {pairs}; CPM {f['cpm']:.3f}")
    else:
        op = f["operating_point"]
        at = (f"; single operating point: sensitivity {op['sensitivity']:.3f} "
              f"at {op['fp_per_image']:.3f} FP/image") if op else ""
        lines.append(f"FROC not defined: {f['reason']}{at}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse(EvalConfig, __doc__.split("\n\n")[0], argv)
    if cfg is None:
        return 2
    try:
        images = load_inputs(cfg)
    except ValueError as err:  # includes DataError
        print(f"error: {err}", file=sys.stderr)
        return 2
    results, matches = evaluate(images, cfg)
    print(format_table(results, list(cfg.thresholds)))
    out = Path(cfg.output_dir)
    write_json_atomic(out / "eval_summary.json", {**results, "config": asdict(cfg), **run_info()})
    write_text_atomic(out / "per_image_metrics.csv", per_image_table(images, matches).to_csv(index=False))
    print(f"wrote {out / 'eval_summary.json'} and {out / 'per_image_metrics.csv'}")
    if cfg.overlay_dir:
        from localization_task.overlay import write_overlays

        try:
            n = write_overlays(images, matches[cfg.froc_threshold], cfg.thresholds, cfg.overlay_dir,
                               cfg.froc_threshold)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {n} overlays to {cfg.overlay_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
