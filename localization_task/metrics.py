"""Localization evaluation over files: threshold-aware Hungarian matching, count accuracy, FROC.

    python localization_task/metrics.py \\
        --predictions outputs/localization/predictions.jsonl \\
        --ground_truth data/nodulocc/localization_labels.csv \\
        --image_roots data/nodulocc/lidc_png_16_bit data/nodulocc/nih_filtered_images \\
        --output_dir outputs/localization_eval --overlay_dir outputs/localization_eval/overlays

(``python -m localization_task.metrics ...`` works too.) Predictions are a
``localization_test_results.csv`` (``file_name,x,y,confidence``), the
CheXagent-2 ``predictions.jsonl`` or a ``.json`` list of ``pred_points``
records; see ``localization_task/evaluation/inputs.py``. The scores are pure functions
over arrays (the first half of this file); the printed tables come from
``localization_task/evaluation/report.py``.

Thresholds are fractions of each image's diagonal (``tight`` 0.02 and
``tolerant`` 0.05 by default). The evaluated images are the union of the
files named in the ground truth and the predictions (plus ``--image_list`` /
scanned ``--image_roots`` when given, as images with no nodule). Radial errors
in mm use each image's spacing from ``--pixel_spacing_csv``, else (a ``.dcm``
image under ``--image_roots``) its DICOM header's PixelSpacing or
ImagerPixelSpacing, else ``--pixel_spacing_mm``; an image with none is left out of the mm figures
(``n_matched_mm`` says how many matched pairs they cover). NaN is written as
null in ``eval_summary.json``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from localization_task.common import cli
from localization_task.dataset import DataError
from localization_task.evaluation.inputs import EvalImages, load_inputs  # noqa: F401  (load_inputs: public)
from localization_task.evaluation.report import format_table
from localization_task.common.run_files import run_info, write_json_atomic, write_text_atomic

# ----------------------------------------------------------------------------- scores over arrays
# Per image and per distance threshold in px, a prediction may match a
# ground-truth point only within the threshold (``dist <= threshold``); among
# such one-to-one matchings we take the one with the most pairs, then the least
# total distance.
#
# Edge cases, by design: precision is NaN when there are no predictions, recall
# and PCK are NaN when there are no ground-truth points; F1 = 2TP / (2TP + FP +
# FN), so it is 0 (not NaN) when one side is empty and NaN only when both are;
# macro averages are over the images where the per-image value is defined
# (precision: images with at least one prediction; recall: images with at least
# one ground-truth point; F1: images with either); radial errors are NaN when
# nothing matched (std is the population std, ddof=0); count accuracy is NaN
# for an empty group of images.
#

FROC_FP_PER_IMAGE = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
NAN = float("nan")


def match_points(pred_xy, gt_xy, max_dist_px: float) -> dict:
    """Maximum-cardinality, then minimum-total-distance matching within ``max_dist_px``.

    Admissible pairs (dist <= max_dist_px) cost ``dist - BIG``, the others 0,
    with BIG > any admissible matching's total distance (min(m, n) pairs of at
    most max_dist_px each). Every full assignment costs f(M) = D(M) - BIG|M|
    for M its admissible pairs, and every admissible matching M is reached by
    some assignment costing at most f(M) (extra admissible pairs only lower
    it), so the optimal assignment's admissible pairs minimise f; since BIG
    exceeds any D(M), one more pair always wins, and among equal counts the
    smaller D wins. Returns ``pred_idx``, ``gt_idx``, ``dist_px`` arrays and
    ``radius_px`` (``max_dist_px``).
    """
    pred = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2)
    empty = {"pred_idx": np.zeros(0, int), "gt_idx": np.zeros(0, int), "dist_px": np.zeros(0),
             "radius_px": float(max_dist_px)}
    if len(pred) == 0 or len(gt) == 0:
        return empty
    dist = np.hypot(pred[:, None, 0] - gt[None, :, 0], pred[:, None, 1] - gt[None, :, 1])
    admissible = dist <= max_dist_px
    if not admissible.any():
        return empty
    big = max_dist_px * (min(len(pred), len(gt)) + 1) + 1.0
    rows, cols = linear_sum_assignment(np.where(admissible, dist - big, 0.0))
    keep = admissible[rows, cols]
    return {"pred_idx": rows[keep], "gt_idx": cols[keep], "dist_px": dist[rows[keep], cols[keep]],
            "radius_px": float(max_dist_px)}


def precision_recall_f1(tp: int, fp: int, fn: int) -> dict:
    """Precision NaN without predictions, recall NaN without GT, F1 = 2TP/(2TP+FP+FN)."""
    return {
        "precision": tp / (tp + fp) if tp + fp else NAN,
        "recall": tp / (tp + fn) if tp + fn else NAN,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else NAN,
    }


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else NAN


def radial_error_stats(dist, unit: str) -> dict:
    """Mean +- std (ddof=0) and median of matched distances; NaN when there are none."""
    dist = np.asarray(dist, dtype=np.float64)
    if len(dist) == 0:
        return {f"mre_{unit}": NAN, f"mre_std_{unit}": NAN, f"median_re_{unit}": NAN}
    return {f"mre_{unit}": float(dist.mean()), f"mre_std_{unit}": float(dist.std()),
            f"median_re_{unit}": float(np.median(dist))}


def detection_metrics(matches: list[dict], n_gt, n_pred, diag_px, pixel_spacing_mm=None) -> dict:
    """Micro and macro P/R/F1, PCK and radial errors from per-image matches.

    ``pixel_spacing_mm`` (mm per pixel: one number, or one per image with NaN
    where unknown) adds the errors in mm over the pairs whose image has one.
    """
    n_gt, n_pred = np.asarray(n_gt, dtype=int), np.asarray(n_pred, dtype=int)
    tp_img = np.array([len(m["pred_idx"]) for m in matches], dtype=int)
    tp, fp, fn = int(tp_img.sum()), int((n_pred - tp_img).sum()), int((n_gt - tp_img).sum())
    per_image = [precision_recall_f1(*c) for c in zip(tp_img, n_pred - tp_img, n_gt - tp_img)]
    out = {"tp": tp, "fp": fp, "fn": fn, **precision_recall_f1(tp, fp, fn)}
    for key in ("precision", "recall", "f1"):
        out[f"macro_{key}"] = _nanmean([p[key] for p in per_image])
    out["pck"] = tp / int(n_gt.sum()) if n_gt.sum() else NAN
    dist_px = np.concatenate([np.zeros(0)] + [m["dist_px"] for m in matches])
    dist_frac = np.concatenate([np.zeros(0)] + [m["dist_px"] / d for m, d in zip(matches, diag_px)])
    out["n_matched"] = len(dist_px)
    out.update(radial_error_stats(dist_px, "px"))
    out.update(radial_error_stats(dist_frac, "frac"))
    if pixel_spacing_mm is not None:
        spacing = np.broadcast_to(np.asarray(pixel_spacing_mm, dtype=np.float64), (len(matches),))
        dist_mm = np.concatenate([np.zeros(0)] + [m["dist_px"] * s for m, s in zip(matches, spacing)
                                                  if np.isfinite(s)])
        out["n_matched_mm"] = len(dist_mm)
        out.update(radial_error_stats(dist_mm, "mm"))
    return out


def count_accuracy(n_gt, n_pred) -> dict:
    """Fraction of images whose number of predictions equals the number of GT points.

    Over all images (``count_accuracy``), over those with at least one GT point
    (``..._with_nodules``) and over those without (``..._without_nodules``):
    predicting nothing is right on every negative, so the overall figure alone
    flatters a model that rarely predicts. NaN for an empty group.
    """
    n_gt, n_pred = np.asarray(n_gt, dtype=int), np.asarray(n_pred, dtype=int)
    out = {}
    for suffix, group in (("", np.ones(len(n_gt), bool)), ("_with_nodules", n_gt > 0),
                          ("_without_nodules", n_gt == 0)):
        correct = n_gt[group] == n_pred[group]
        out[f"count_accuracy{suffix}"] = float(correct.mean()) if len(correct) else NAN
        out[f"n_count_correct{suffix}"] = int(correct.sum())
        out[f"n_count_images{suffix}"] = len(correct)
    return out


def _froc_curve(gt_xy, pred_xy, pred_conf, threshold_px) -> list[dict]:
    """Operating points from sweeping the confidence cut-off down.

    Only the images that gain predictions at a cut-off are matched again.
    """
    n_images, n_gt = len(gt_xy), sum(len(g) for g in gt_xy)
    images_at = {}
    for i, conf in enumerate(pred_conf):
        for c in np.unique(conf):
            images_at.setdefault(float(c), []).append(i)
    tp, kept = np.zeros(n_images, int), np.zeros(n_images, int)
    curve = [{"confidence": float("inf"), "fp_per_image": 0.0, "sensitivity": 0.0}]
    for cut in sorted(images_at, reverse=True):
        for i in images_at[cut]:
            keep = pred_conf[i] >= cut
            kept[i] = keep.sum()
            tp[i] = len(match_points(pred_xy[i][keep], gt_xy[i], threshold_px[i])["pred_idx"])
        curve.append({"confidence": cut, "fp_per_image": (kept.sum() - tp.sum()) / n_images,
                      "sensitivity": tp.sum() / n_gt})
    return curve


def froc(gt_xy, pred_xy, pred_conf, threshold_px, fp_per_image=FROC_FP_PER_IMAGE) -> dict:
    """Sensitivity at fixed false positives per image and their mean (CPM).

    Sensitivity at a rate r is the highest sensitivity among the operating
    points with at most r FP per image (a step curve, no interpolation).
    Undefined (``defined: False`` with a ``reason``, sensitivities None) when
    there are no predictions or GT points, when some prediction has no
    confidence, or when all confidences are equal: then the only honest
    number is the single operating point, which is always reported.
    """
    n_images, n_gt = len(gt_xy), sum(len(g) for g in gt_xy)
    conf = np.concatenate([np.zeros(0)] + [np.asarray(c, dtype=np.float64) for c in pred_conf])
    out = {"defined": False, "reason": None, "fp_per_image_targets": list(fp_per_image),
           "sensitivity": None, "cpm": None, "operating_point": None, "curve": None}
    if n_gt == 0 or len(conf) == 0:
        out["reason"] = "no ground-truth points" if n_gt == 0 else "no predictions"
        return out
    tp = sum(len(match_points(p, g, t)["pred_idx"]) for p, g, t in zip(pred_xy, gt_xy, threshold_px))
    out["operating_point"] = {"fp_per_image": (len(conf) - tp) / n_images, "sensitivity": tp / n_gt}
    if np.isnan(conf).any():
        out["reason"] = "some predictions carry no confidence"
    elif len(np.unique(conf)) == 1:
        out["reason"] = "all predictions have the same confidence, so there is no curve to sweep"
    if out["reason"]:
        return out
    curve = _froc_curve(gt_xy, pred_xy, [np.asarray(c, dtype=np.float64) for c in pred_conf], threshold_px)
    fppi = np.array([p["fp_per_image"] for p in curve])
    sens = np.array([p["sensitivity"] for p in curve])
    at_rate = [float(sens[fppi <= r + 1e-12].max()) for r in fp_per_image]
    out.update(defined=True, sensitivity=at_rate, cpm=float(np.mean(at_rate)), curve=curve)
    return out


# ----------------------------------------------------------------------------- evaluation over files

DEFAULT_THRESHOLDS = {"tight": 0.02, "tolerant": 0.05}
SUMMARY_JSON, PER_IMAGE_CSV = "eval_summary.json", "per_image_metrics.csv"


@dataclass
class EvalConfig:
    """What to evaluate and how. Code that builds ``EvalImages`` itself (a trainer) leaves the
    two input files out; the command line requires them."""

    predictions: str | None = cli.arg(
        None, "localization_test_results.csv, predictions.jsonl or a .json list of records", required=True
    )
    ground_truth: str | None = cli.arg(None, "localization_labels.csv (file_name,x,y)", required=True)
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
    pixel_spacing_mm: float | None = cli.arg(None, "also report radial errors in mm, at this mm per pixel")
    pixel_spacing_csv: str | None = cli.arg(
        None, "CSV file_name,spacing_mm of mm per pixel per image; for the images it lists it wins over a "
        "DICOM header's spacing and --pixel_spacing_mm; images with none are left out of the mm errors"
    )
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
        if self.pixel_spacing_mm is not None and not 0 < self.pixel_spacing_mm < math.inf:
            raise ValueError(f"--pixel_spacing_mm must be a positive number of mm per pixel, "
                             f"got {self.pixel_spacing_mm}.")
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


def spacing_per_image(images: EvalImages, cfg: EvalConfig) -> np.ndarray | None:
    """mm per pixel per image: the image's own spacing, else ``cfg.pixel_spacing_mm``, else NaN;
    None when neither is given (no mm figures at all)."""
    single = NAN if cfg.pixel_spacing_mm is None else cfg.pixel_spacing_mm
    if images.spacing_mm is None:
        return None if cfg.pixel_spacing_mm is None else np.full(len(images.file_names), single)
    own = np.asarray(images.spacing_mm, dtype=np.float64)
    return np.where(np.isfinite(own), own, single)


def radius_range(radius_px) -> dict:
    """Smallest and largest threshold radius in px over the images of known size."""
    radius_px = np.asarray(radius_px, dtype=np.float64)
    known = radius_px[np.isfinite(radius_px)]
    if len(known) == 0:
        return {"radius_px_min": NAN, "radius_px_max": NAN}
    return {"radius_px_min": float(known.min()), "radius_px_max": float(known.max())}


def evaluate(images: EvalImages, cfg: EvalConfig) -> tuple[dict, dict]:
    """All metrics as one JSON-ready dict, plus the per-threshold matches per image."""
    diag_px = np.hypot(images.width_px, images.height_px)
    n_gt = np.array([len(g) for g in images.gt_xy], dtype=int)
    n_pred = np.array([len(p) for p in images.pred_xy], dtype=int)
    spacing_mm = spacing_per_image(images, cfg)
    results = {"n_images": len(n_gt), "n_images_with_gt": int((n_gt > 0).sum()),
               "n_images_with_pred": int((n_pred > 0).sum()),
               "n_images_with_gt_or_pred": int(((n_gt > 0) | (n_pred > 0)).sum()),
               "n_gt_points": int(n_gt.sum()), "n_pred_points": int(n_pred.sum())}
    if spacing_mm is not None:
        results["n_images_with_spacing"] = int(np.isfinite(spacing_mm).sum())
    matches = {}
    for name, frac in cfg.thresholds.items():
        radius_px = frac * diag_px
        matches[name] = [match_points(p, g, r) for p, g, r in zip(images.pred_xy, images.gt_xy, radius_px)]
        results[name] = {"threshold_frac": frac, **radius_range(radius_px),
                         **detection_metrics(matches[name], n_gt, n_pred, diag_px, spacing_mm)}
    results.update(count_accuracy(n_gt, n_pred))
    froc_px = cfg.thresholds[cfg.froc_threshold] * diag_px
    results["froc"] = {"threshold": cfg.froc_threshold,
                       **froc(images.gt_xy, images.pred_xy, images.pred_conf, froc_px)}
    return results, matches


def per_image_table(images: EvalImages, matches: dict) -> pd.DataFrame:
    """One row per image: size, counts, and per threshold its radius, TP/FP/FN, P/R/F1 and errors."""
    n_gt = np.array([len(g) for g in images.gt_xy], dtype=int)
    n_pred = np.array([len(p) for p in images.pred_xy], dtype=int)
    table = pd.DataFrame({"file_name": images.file_names,
                          "width_px": pd.array(images.width_px, dtype="Int64"),
                          "height_px": pd.array(images.height_px, dtype="Int64"),
                          "n_gt": n_gt, "n_pred": n_pred,
                          "count_correct": n_gt == n_pred})
    for name, per_image in matches.items():
        table[f"{name}_radius_px"] = [m.get("radius_px", NAN) for m in per_image]
        tp = np.array([len(m["pred_idx"]) for m in per_image], dtype=int)
        scores = [precision_recall_f1(*c) for c in zip(tp, n_pred - tp, n_gt - tp)]
        table[f"{name}_tp"], table[f"{name}_fp"], table[f"{name}_fn"] = tp, n_pred - tp, n_gt - tp
        for key in ("precision", "recall", "f1"):
            table[f"{name}_{key}"] = [s[key] for s in scores]
        errors = [radial_error_stats(m["dist_px"], "px") for m in per_image]
        table[f"{name}_mre_px"] = [e["mre_px"] for e in errors]
        table[f"{name}_median_re_px"] = [e["median_re_px"] for e in errors]
    return table


def write_evaluation(out_dir: str | Path, images: EvalImages, cfg: EvalConfig, results: dict,
                     matches: dict, extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``eval_summary.json`` (results, then ``extra``, the config, versions and commit) and
    ``per_image_metrics.csv`` into ``out_dir``, each in one step; returns their paths.

    ``extra`` holds what the caller wants on record beside the metrics (say,
    the checkpoint evaluated); its keys must not reuse a key of the summary.
    """
    extra = extra or {}
    clash = sorted(set(extra) & (set(results) | {"config", "git_commit", "versions"}))
    if clash:
        raise ValueError(f"extra key(s) {', '.join(clash)} would overwrite the summary: rename them.")
    out = Path(out_dir)
    per_image_csv = per_image_table(images, matches).to_csv(index=False)
    write_json_atomic(out / SUMMARY_JSON, {**results, **extra, "config": asdict(cfg), **run_info()})
    write_text_atomic(out / PER_IMAGE_CSV, per_image_csv)
    return out / SUMMARY_JSON, out / PER_IMAGE_CSV


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
    try:
        summary_path, per_image_path = write_evaluation(cfg.output_dir, images, cfg, results, matches)
    except OSError as err:
        print(f"error: cannot write to the output folder {cfg.output_dir} ({err.strerror}): "
              "pass an --output_dir you can write to.", file=sys.stderr)
        return 2
    print(f"wrote {summary_path} and {per_image_path}")
    if Path(cfg.predictions).suffix.lower() == ".csv" and not (cfg.image_list or cfg.scan_image_roots):
        # A CSV has no row for an image without a predicted nodule: such images would go uncounted.
        print("warning: predictions from a CSV without --image_list or --scan_image_roots: images with no row "
              "in either file are not counted as true negatives.", file=sys.stderr)
    if cfg.overlay_dir:
        from localization_task.evaluation.overlay import write_overlays

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
