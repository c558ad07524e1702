"""Localization scores over plain arrays: threshold-aware matching, P/R/F1, radial errors,
count accuracy and FROC. ``localization_task/metrics.py`` runs them over files.

Per image and per distance threshold in px, a prediction may match a
ground-truth point only within the threshold (``dist <= threshold``); among
such one-to-one matchings we take the one with the most pairs, then the least
total distance.

Edge cases, by design: precision is NaN when there are no predictions, recall
and PCK are NaN when there are no ground-truth points; F1 = 2TP / (2TP + FP +
FN), so it is 0 (not NaN) when one side is empty and NaN only when both are;
macro averages are over the images where the per-image value is defined
(precision: images with at least one prediction; recall: images with at least
one ground-truth point; F1: images with either); radial errors are NaN when
nothing matched (std is the population std, ddof=0); count accuracy is NaN
for an empty group of images.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

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
