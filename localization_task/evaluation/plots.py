"""Pictures of a test evaluation: the FROC curve as a PNG, and overlays of a few test images.

    from localization_task.evaluation.plots import plot_froc, write_test_pictures
    plot_froc("outputs/localization_training/froc.png", results["froc"])

`results["froc"]` is what `metrics.evaluate` returns under "froc": the
operating points from sweeping the confidence cut-off down, the sensitivity at
each target rate of false positives per image, and their mean (CPM). When the
curve is undefined (no confidences, all equal, no predictions or no ground
truth) the figure shows the single operating point, if any, and says why.
Figures are drawn on `matplotlib.figure.Figure` without pyplot: no window, no
global backend.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from localization_task.evaluation.overlay import overlay_file_name, overlay_title, write_overlay
from localization_task.common.run_files import save_figure_atomic

FROC_PNG, OVERLAY_DIR = "froc.png", "overlays"  # training's pictures of the test split
FROC_FIGURE_IN = (6.0, 4.5)
FROC_DPI = 100  # 600 x 450 px


def plot_froc(path: str | Path, froc: dict) -> Path:
    """Sensitivity against false positives per image, the target rates marked; returns `path`."""
    figure = Figure(figsize=FROC_FIGURE_IN, layout="constrained")
    ax = figure.subplots()
    right = 1.0
    if froc.get("curve"):
        fppi = [point["fp_per_image"] for point in froc["curve"]]
        sensitivity = [point["sensitivity"] for point in froc["curve"]]
        ax.step(fppi, sensitivity, where="post", label=f"FROC (CPM {froc['cpm']:.3f})")
        ax.plot(froc["fp_per_image_targets"], froc["sensitivity"], "o", label="at the target FP rates")
        right = max(fppi + list(froc["fp_per_image_targets"]))
    else:
        ax.text(0.5, 0.5, f"no curve: {froc.get('reason') or 'undefined'}", ha="center", va="center",
                transform=ax.transAxes)
    point = froc.get("operating_point")
    if point:
        ax.plot(point["fp_per_image"], point["sensitivity"], "s", color="black", label="all kept predictions")
        right = max(right, point["fp_per_image"])
    at = f" ({froc['threshold']} distance)" if froc.get("threshold") else ""
    ax.set(xlabel="false positives per image", ylabel="sensitivity", title=f"FROC{at}",
           xlim=(0, 1.05 * right or 1.0), ylim=(0, 1.02))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    return save_figure_atomic(figure, path, dpi=FROC_DPI)


def overlay_picks(gt_xy: list, pred_xy: list, n_overlays: int) -> list[int]:
    """Up to `n_overlays` image indices: those with ground truth first, then those with predictions only."""
    with_gt = [i for i, g in enumerate(gt_xy) if len(g)]
    predicted_only = [i for i, (g, p) in enumerate(zip(gt_xy, pred_xy)) if not len(g) and len(p)]
    return (with_gt + predicted_only)[:n_overlays]


def write_test_pictures(out_dir: Path, results: dict, images, matches: dict, thresholds_frac: dict[str, float],
                        paths: dict[str, str], n_overlays: int) -> list[Path]:
    """froc.png and `overlays/` (a few test images, see overlay_picks) in `out_dir`; returns what was written.

    `images` is the evaluated metrics.EvalImages, `matches` its matches per
    threshold, `paths` each image's file. Overlays of an earlier run are
    replaced, so the folder shows this run only.
    """
    written = [plot_froc(out_dir / FROC_PNG, results["froc"])]
    at = results["froc"]["threshold"]
    overlay_dir = out_dir / OVERLAY_DIR
    shutil.rmtree(overlay_dir, ignore_errors=True)
    for i in overlay_picks(images.gt_xy, images.pred_xy, n_overlays):
        name = images.file_names[i]
        diag_px = float(np.hypot(images.width_px[i], images.height_px[i]))
        title = overlay_title(name, len(images.gt_xy[i]), len(images.pred_xy[i]),
                              len(matches[at][i]["pred_idx"]), at)
        out_path = overlay_dir / overlay_file_name(name)
        write_overlay(Path(paths[name]), out_path, images.gt_xy[i], images.pred_xy[i], images.pred_conf[i],
                      matches[at][i], {k: f * diag_px for k, f in thresholds_frac.items()}, title)
        written.append(out_path)
    return written
