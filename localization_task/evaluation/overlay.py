"""PNG overlays of ground truth, predictions and matches, for looking at failures (Pillow only).

Written by ``localization_task/metrics.py --overlay_dir DIR`` and, for a few
test images, by ``localization_task/train.py`` (``overlays/``). Each image
(PNG, JPEG or DICOM) is shown after a per-image percentile stretch (16-bit
radiographs use a narrow part of their range), shrunk to at most
``max_side_px``. Green dots are ground-truth points with one ring per distance
threshold; red crosses are predictions, each with its confidence when known;
yellow lines join the pairs matched at the FROC threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from localization_task.dataset import (
    DEFAULT_CLIP_HIGH_PCT, DEFAULT_CLIP_LOW_PCT, DataError, percentile_clip_to_uint8, read_grey, to_grey_array,
)
from localization_task.common.run_files import write_png_atomic

GT_COLOUR, PRED_COLOUR, MATCH_COLOUR = (0, 220, 0), (255, 40, 40), (255, 220, 0)
RING_COLOURS = ((0, 200, 255), (160, 120, 255), (255, 255, 255))


def to_display_uint8(image: Image.Image | np.ndarray, low_pct: float = DEFAULT_CLIP_LOW_PCT,
                     high_pct: float = DEFAULT_CLIP_HIGH_PCT) -> Image.Image:
    """Greyscale 8-bit image, linearly stretched between two intensity percentiles
    (the same stretch the model input gets); `image` is a Pillow image or a grey array."""
    grey = image if isinstance(image, np.ndarray) else to_grey_array(image)
    return Image.fromarray(percentile_clip_to_uint8(grey, low_pct, high_pct))


def draw_overlay(image: Image.Image | np.ndarray, gt_xy, pred_xy, pred_idx, gt_idx, radii_px: dict[str, float],
                 title: str = "", max_side_px: int = 1024, pred_conf=None) -> Image.Image:
    """RGB overlay; coordinates are in the original image's pixels. `pred_conf` (one per
    prediction, NaN for none) is written beside each red cross."""
    grey = to_display_uint8(image)
    scale = min(1.0, max_side_px / max(grey.size))
    if scale < 1:
        grey = grey.resize((round(grey.width * scale), round(grey.height * scale)), Image.Resampling.BILINEAR)
    canvas = grey.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    gt = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2) * scale
    pred = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2) * scale
    mark = max(4.0, 0.012 * max(canvas.size))
    width = max(1, round(mark / 3))
    for p, g in zip(pred_idx, gt_idx):
        draw.line([tuple(pred[p]), tuple(gt[g])], fill=MATCH_COLOUR, width=width)
    for x, y in gt:
        for (_, radius), colour in zip(sorted(radii_px.items(), key=lambda kv: kv[1]), RING_COLOURS):
            r = radius * scale
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=1)
        draw.ellipse([x - mark / 2, y - mark / 2, x + mark / 2, y + mark / 2], fill=GT_COLOUR)
    font = ImageFont.load_default(size=max(10, round(max(canvas.size) / 50)))
    conf = np.full(len(pred), np.nan) if pred_conf is None else np.asarray(pred_conf, dtype=np.float64)
    for (x, y), c in zip(pred, conf):
        draw.line([x - mark, y - mark, x + mark, y + mark], fill=PRED_COLOUR, width=width)
        draw.line([x - mark, y + mark, x + mark, y - mark], fill=PRED_COLOUR, width=width)
        if np.isfinite(c):
            draw.text((x + mark + 1, y - mark), f"{c:.2f}", fill=PRED_COLOUR, font=font,
                      stroke_width=1, stroke_fill=(0, 0, 0))
    if title:
        box = draw.textbbox((4, 4), title, font=font)
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(0, 0, 0))
        draw.text((4, 4), title, fill=(255, 255, 255), font=font)
    return canvas


def overlay_file_name(file_name: str) -> str:
    """The overlay's name: sub-folders flattened with '__', the suffix replaced by .png."""
    return file_name.replace("/", "__").rsplit(".", 1)[0] + ".png"


def write_overlay(path: Path, out_path: Path, gt_xy, pred_xy, pred_conf, match: dict,
                  radii_px: dict[str, float], title: str) -> None:
    """Draw one image's overlay (see draw_overlay) and write it as a PNG in one step."""
    try:
        grey = read_grey(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise DataError(f"The image {path} cannot be read: replace the file or drop --overlay_dir.") from None
    canvas = draw_overlay(grey, gt_xy, pred_xy, match["pred_idx"], match["gt_idx"], radii_px, title,
                          pred_conf=pred_conf)
    write_png_atomic(out_path, canvas)


def overlay_title(name: str, n_gt: int, n_pred: int, n_matched: int, match_name: str = "") -> str:
    at = f" ({match_name})" if match_name else ""
    return f"{name}  GT {n_gt}  pred {n_pred}  matched{at} {n_matched}"


def write_overlays(images, matches: list[dict], thresholds_frac: dict[str, float], overlay_dir: str | Path,
                   match_name: str = "") -> int:
    """One overlay per image with any GT point or prediction; ``images`` is metrics.EvalImages,
    ``matches`` its per-image matches at the threshold called ``match_name``."""
    written = 0
    for i, name in enumerate(images.file_names):
        if not (len(images.gt_xy[i]) or len(images.pred_xy[i])):
            continue
        path = images.finder.find(name)
        if path is None:
            raise DataError(f"The image {name} is not under --image_roots, so it cannot be drawn: "
                            "pass the folder that holds it, or drop --overlay_dir.")
        diag_px = float(np.hypot(images.width_px[i], images.height_px[i]))
        radii = {k: f * diag_px for k, f in thresholds_frac.items()}
        title = overlay_title(name, len(images.gt_xy[i]), len(images.pred_xy[i]), len(matches[i]["pred_idx"]),
                              match_name)
        write_overlay(path, Path(overlay_dir) / overlay_file_name(name), images.gt_xy[i], images.pred_xy[i],
                      images.pred_conf[i], matches[i], radii, title)
        written += 1
    return written
