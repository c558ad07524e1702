"""Printed tables of a localization evaluation, no line wider than 100 columns.

``format_table(results, names)`` turns the dict of ``metrics.evaluate`` into
a line of counts, one table with a column per threshold (split into several
tables when the thresholds do not fit side by side), footnotes on what the
macro averages and the mm errors cover, count accuracy three ways and FROC.
Everything printed is also in ``eval_summary.json``.
"""

from __future__ import annotations

import math
import textwrap

MAX_WIDTH = 100
GAP = "  "


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value, digits: int) -> str:
    return "n/a" if _missing(value) else f"{value:.{digits}f}"


def _mean_std(result: dict, unit: str, digits: int) -> str:
    mean, std = result[f"mre_{unit}"], result[f"mre_std_{unit}"]
    return "n/a" if _missing(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _radius(result: dict) -> str:
    """The threshold radius in px, or its range when image sizes differ."""
    low, high = result.get("radius_px_min"), result.get("radius_px_max")
    if _missing(low):
        return "n/a"
    low, high = f"{low:.1f}", f"{high:.1f}"
    return low if low == high else f"{low}-{high}"


# (row label, cell of one threshold's results); "*" marks the macro averages of the footnote.
ROWS = [
    ("fraction of diagonal", lambda r: f"{r['threshold_frac']:g}"),
    ("radius (px)", _radius),
    ("TP / FP / FN", lambda r: f"{r['tp']} / {r['fp']} / {r['fn']}"),
    ("precision", lambda r: _number(r["precision"], 3)),
    ("recall", lambda r: _number(r["recall"], 3)),
    ("F1", lambda r: _number(r["f1"], 3)),
    ("macro precision *", lambda r: _number(r["macro_precision"], 3)),
    ("macro recall *", lambda r: _number(r["macro_recall"], 3)),
    ("macro F1 *", lambda r: _number(r["macro_f1"], 3)),
    ("PCK", lambda r: _number(r["pck"], 3)),
    ("matched pairs", lambda r: str(r["n_matched"])),
    ("radial error (px), mean ± std", lambda r: _mean_std(r, "px", 1)),
    ("radial error (px), median", lambda r: _number(r["median_re_px"], 1)),
    ("radial error (frac), mean ± std", lambda r: _mean_std(r, "frac", 4)),
    ("radial error (frac), median", lambda r: _number(r["median_re_frac"], 4)),
]
MM_ROWS = [
    ("matched pairs with mm", lambda r: str(r["n_matched_mm"])),
    ("radial error (mm), mean ± std", lambda r: _mean_std(r, "mm", 1)),
    ("radial error (mm), median", lambda r: _number(r["median_re_mm"], 1)),
]


def grid(corner: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    """Label column plus right-aligned columns; columns that do not fit in MAX_WIDTH go to
    further blocks below, each repeating the labels."""
    label_width = max(len(corner), *(len(label) for label, _ in rows))
    widths = [max(len(name), *(len(cells[j]) for _, cells in rows)) for j, name in enumerate(columns)]
    blocks, start = [], 0
    while start < len(columns):
        end, used = start + 1, label_width + len(GAP) + widths[start]
        while end < len(columns) and used + len(GAP) + widths[end] <= MAX_WIDTH:
            used += len(GAP) + widths[end]
            end += 1
        blocks.append(range(start, end))
        start = end
    lines = []
    for block in blocks:
        if lines:
            lines.append("")
        for label, cells in [(corner, columns), *rows]:
            lines.append(GAP.join([label.ljust(label_width)] + [cells[j].rjust(widths[j]) for j in block]))
    return lines


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, MAX_WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def _notes(results: dict, names: list[str]) -> list[str]:
    lines = _wrap(
        f"* macro: the mean of per-image values; precision over the {results['n_images_with_pred']} "
        f"images with at least one prediction, recall over the {results['n_images_with_gt']} with at "
        f"least one ground-truth point, F1 over the {results['n_images_with_gt_or_pred']} with either."
    )
    n_spacing = results.get("n_images_with_spacing")
    if n_spacing is not None and n_spacing < results["n_images"]:
        lines += _wrap(f"Errors in mm cover only the matched pairs on the {n_spacing} of "
                       f"{results['n_images']} images that have a pixel spacing.")
    return lines


def _count_block(results: dict) -> list[str]:
    rows = []
    for label, suffix in (("all images", ""), ("images with nodules", "_with_nodules"),
                          ("images without nodules", "_without_nodules")):
        correct, total = results[f"n_count_correct{suffix}"], results[f"n_count_images{suffix}"]
        rows.append((label, [_number(results[f"count_accuracy{suffix}"], 3), f"{correct}/{total}"]))
    return ["count accuracy (number of predictions = number of ground-truth points)",
            *grid("", ["accuracy", "correct"], rows)]


def _froc_block(froc: dict) -> list[str]:
    if not froc["defined"]:
        lines = _wrap(f"FROC not defined at {froc['threshold']}: {froc['reason']}.")
        point = froc["operating_point"]
        if point:
            lines += _wrap(f"Single operating point: sensitivity {point['sensitivity']:.3f} at "
                           f"{point['fp_per_image']:.3f} FP per image.")
        return lines
    rates = [f"{r:g}" for r in froc["fp_per_image_targets"]]
    head = _wrap(f"FROC at {froc['threshold']}: sensitivity at each rate of false positives per image; "
                 f"CPM (their mean) {froc['cpm']:.3f}")
    return [*head, *grid("FP per image", rates, [("sensitivity", [f"{s:.3f}" for s in froc["sensitivity"]])])]


def format_table(results: dict, names: list[str]) -> str:
    """The printed report: counts, the per-threshold table and its notes, count accuracy, FROC."""
    rows = ROWS + (MM_ROWS if "mre_mm" in results[names[0]] else [])
    table = [(label, [cell(results[name]) for name in names]) for label, cell in rows]
    lines = _wrap(f"{results['n_images']} images: {results['n_images_with_gt']} with nodules "
                  f"({results['n_gt_points']} points), {results['n_images_with_pred']} with predictions "
                  f"({results['n_pred_points']} points)")
    lines += ["", *grid("threshold", names, table), *_notes(results, names)]
    lines += ["", *_count_block(results), "", *_froc_block(results["froc"])]
    return "\n".join(lines)
