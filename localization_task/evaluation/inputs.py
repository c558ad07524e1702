"""Input and output for the localization evaluator (``localization_task/metrics.py``).

Readers turn user files into plain arrays and raise :class:`DataError` with
one plain sentence naming the file and what to do; the evaluator prints that
sentence and exits with status 2.

Formats read (the ground truth, ``localization_labels.csv``, is read by
``dataset.read_ground_truth``):
- predictions ``localization_test_results.csv``: ``file_name,x,y[,confidence]``;
  an image with no predicted nodule has no rows (or one row with empty ``x``
  and ``y``).
- predictions ``predictions.jsonl`` (CheXagent-2 inference): one JSON object
  per line with ``file_name``, ``points`` (a list of ``{"x", "y"[,
  "confidence"]}`` in original pixels) and ideally ``width`` and ``height``;
  other keys are ignored, and a later record for the same image wins.
- predictions ``*.json`` (the prediction cache of another challenge team): one
  JSON list of records ``{"file_name", "pred_points": [[x, y], ...], "width",
  "height"[, "n_pred", "image_path"]}``, one record per image (records are
  counted from 1 in messages); ``image_path`` is ignored and there are no
  confidences.
- per-image pixel spacing: a CSV file ``file_name,spacing_mm``; for a ``.dcm``
  image it lists not, the DICOM header's PixelSpacing, else ImagerPixelSpacing.
- image sizes: the predictions' width/height, else the image header (a DICOM's
  Columns and Rows).
- an image list: a text file with one file name per line, or a CSV file with
  a ``file_name`` column.

Every coordinate must be a finite number: a NaN or infinite one is refused in
all formats (an image without nodules has no points, not a NaN point). A
confidence may be missing (an empty field, null or NaN) but not infinite.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from localization_task.dataset import (
    IMAGE_SUFFIXES, DataError, image_size, points_by_image, read_ground_truth, read_table, safe_join,
)
from localization_task.common.dicom import is_dicom, read_dicom_header
from localization_task.common.run_files import JsonLineError, iter_jsonl


@dataclass
class Predictions:
    """Predicted points per image; ``sizes`` holds (width, height) where the file gives it."""

    xy: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, int]]

    def add(self, name: str, xy: np.ndarray, conf: np.ndarray, size: tuple[int, int] | None) -> None:
        self.xy[name], self.confidence[name] = xy, conf
        if size is not None:
            self.sizes[name] = size


def _checked_points(xy, conf, where: str) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    if not np.isfinite(xy).all():
        raise DataError(f"{where} has a coordinate that is not finite (NaN or infinite): drop that point "
                        "(an image without nodules has no points).")
    if np.isinf(conf).any():
        raise DataError(f"{where} has a confidence that is not finite: give a number or leave it out.")
    return xy, conf


def _record_size(record: dict, where: str) -> tuple[int, int] | None:
    if record.get("width") is None or record.get("height") is None:
        return None
    try:
        size = (int(record["width"]), int(record["height"]))
    except (TypeError, ValueError):
        size = None
    if size is None or min(size) <= 0:
        raise DataError(f"{where} has a width/height that is not a positive whole number: fix or drop them.")
    return size


def _jsonl_record(record, number: int, path: Path) -> tuple[str, np.ndarray, np.ndarray, tuple | None]:
    where = f"The predictions file {path}, line {number},"
    try:
        name = record["file_name"]
        points = record["points"] or []
        xy = [[float(p["x"]), float(p["y"])] for p in points]
        conf = [np.nan if p.get("confidence") is None else float(p["confidence"]) for p in points]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(
            f"{where} lacks file_name or points with numeric x and y: each record needs "
            '{"file_name": ..., "points": [{"x": ..., "y": ...}]}.'
        )
    xy, conf = _checked_points(xy, conf, where)
    return str(name), xy, conf, _record_size(record, where)


def _read_jsonl(path: Path) -> Predictions:
    preds = Predictions({}, {}, {})
    try:
        for number, record in iter_jsonl(path):
            preds.add(*_jsonl_record(record, number, path))  # as in the resume cache, a later record wins
    except JsonLineError as err:
        raise DataError(f"The predictions file {path}, line {err.line_no}, is not valid JSON: "
                        "regenerate the file or delete that line.") from None
    return preds


def _json_list_record(record, number: int, path: Path) -> tuple[str, np.ndarray, np.ndarray, tuple | None]:
    where = f"The predictions file {path}, record {number},"
    if not (isinstance(record, dict) and isinstance(record.get("file_name"), str)
            and isinstance(record.get("pred_points"), list)):
        raise DataError(f'{where} lacks a file_name or a pred_points list: each record needs '
                        '{"file_name": ..., "pred_points": [[x, y], ...]}.')
    where = f"The predictions file {path}, record {number} ({record['file_name']}),"
    try:
        pairs = all(isinstance(point, list) and len(point) == 2 for point in record["pred_points"])
        xy = [[float(v) for v in point] for point in record["pred_points"]] if pairs else None
    except (TypeError, ValueError):
        xy = None
    if xy is None:
        raise DataError(f"{where} has a point that is not a pair of numbers: write each point as [x, y].")
    xy, conf = _checked_points(xy, np.full(len(xy), np.nan), where)
    n_pred = record.get("n_pred")
    if n_pred is not None and n_pred != len(xy):
        raise DataError(f"{where} gives n_pred {n_pred} but holds {len(xy)} points: "
                        "make n_pred equal the number of points, or drop it.")
    return record["file_name"], xy, conf, _record_size(record, where)


def _read_json_list(path: Path) -> Predictions:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise DataError(f"The predictions file {path} is not valid JSON{where}: regenerate it.") from None
    if not isinstance(records, list):
        raise DataError(f"The predictions file {path} does not hold a JSON list of records: a .json file "
                        "must be a list of {\"file_name\", \"pred_points\"} records (use .jsonl for one "
                        "record per line).")
    preds, first_record = Predictions({}, {}, {}), {}
    for number, record in enumerate(records, start=1):
        name, xy, conf, size = _json_list_record(record, number, path)
        if name in first_record:
            raise DataError(f"The predictions file {path} has two records for {name} "
                            f"(records {first_record[name]} and {number}): keep one per image.")
        first_record[name] = number
        preds.add(name, xy, conf, size)
    return preds


def read_predictions(path: str | Path) -> Predictions:
    """Predictions from a CSV, ``predictions.jsonl`` or a ``.json`` list of records (by suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        df = read_table(path, ("file_name", "x", "y"), "predictions")
        xy, conf = points_by_image(df, path, "predictions")
        return Predictions(xy, conf, {})
    if not path.is_file():
        raise DataError(f"The predictions file {path} does not exist: check the path.")
    return _read_jsonl(path) if suffix == ".jsonl" else _read_json_list(path)


def read_pixel_spacing(path: str | Path) -> dict[str, float]:
    """``{file_name: mm per pixel}`` from a CSV with ``file_name,spacing_mm``, one row per image."""
    path = Path(path)
    df = read_table(path, ("file_name", "spacing_mm"), "pixel-spacing")
    spacing = pd.to_numeric(df["spacing_mm"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(spacing) & (spacing > 0)))
    if len(bad):
        raise DataError(f"The pixel-spacing file {path} has a spacing_mm that is not a positive number "
                        f"on line {bad[0] + 2}: give mm per pixel, such as 0.143.")
    names = df["file_name"].astype(str)
    duplicated = names[names.duplicated()]
    if len(duplicated):
        raise DataError(f"The pixel-spacing file {path} lists {duplicated.iloc[0]} more than once: "
                        "keep one row per image.")
    return dict(zip(names, spacing.tolist()))


def read_image_list(path: str | Path) -> list[str]:
    """File names from a text file (one per line, ``#`` comments) or a CSV with ``file_name``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return [str(n) for n in pd.unique(read_table(path, ("file_name",), "image-list")["file_name"])]
    if not path.is_file():
        raise DataError(f"The image-list file {path} does not exist: check the path.")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))


class ImageFinder:
    """Finds an image under several roots: ``root/file_name`` first, then a PNG/JPEG/DICOM of that basename
    anywhere below."""

    def __init__(self, roots: list[str] | tuple[str, ...]):
        self.roots = [Path(r) for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise DataError(f"The image root {root} is not a folder: check --image_roots.")
        self._by_basename: dict[str, Path] | None = None

    def _index(self) -> dict[str, Path]:
        if self._by_basename is None:
            self._by_basename = {}
            for root in self.roots:
                for folder, _, files in sorted(os.walk(root)):
                    for f in sorted(files):
                        if f.lower().endswith(IMAGE_SUFFIXES):
                            self._by_basename.setdefault(f, Path(folder) / f)
        return self._by_basename

    def find(self, file_name: str) -> Path | None:
        safe_join(self.roots[0], file_name)  # names from the input files never leave the roots
        for root in self.roots:
            if (root / file_name).is_file():
                return root / file_name
        return self._index().get(Path(file_name).name)

    def all_names(self) -> list[str]:
        """Basenames of every PNG/JPEG/DICOM file under the roots."""
        return sorted(self._index())


def lookup_image_size(file_name: str, sizes: dict[str, tuple[int, int]],
                      finder: ImageFinder | None) -> tuple[int, int]:
    """(width, height) from the predictions file, else from the image header; DataError if neither."""
    if file_name in sizes:
        return sizes[file_name]
    path = finder.find(file_name) if finder is not None else None
    if path is None:
        roots = ", ".join(str(r) for r in finder.roots) if finder else "none given"
        raise DataError(
            f"The size of image {file_name} is unknown (predictions give no width/height and it is not under "
            f"--image_roots: {roots}): pass the folder that holds it with --image_roots."
        )
    try:
        return image_size(path)
    except (OSError, ValueError):  # ValueError: a DICOM without a readable header
        raise DataError(f"The image {path} cannot be read: replace the file or remove it from the inputs.")


@dataclass
class EvalImages:
    """Aligned per-image arrays; width/height are NaN for images without any point.

    ``spacing_mm`` (mm per pixel) is NaN for an image without its own spacing;
    the evaluator then uses ``EvalConfig.pixel_spacing_mm`` where given.
    """

    file_names: list[str]
    gt_xy: list[np.ndarray]
    pred_xy: list[np.ndarray]
    pred_conf: list[np.ndarray]
    width_px: np.ndarray
    height_px: np.ndarray
    finder: ImageFinder | None = None
    spacing_mm: np.ndarray | None = None


def load_inputs(cfg) -> EvalImages:
    """Read every input file named in ``cfg`` (a ``metrics.EvalConfig``) before anything is written."""
    gt = read_ground_truth(cfg.ground_truth)
    preds = read_predictions(cfg.predictions)
    spacing = read_pixel_spacing(cfg.pixel_spacing_csv) if cfg.pixel_spacing_csv else None
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
            if cfg.overlay_dir and finder.find(name) is None:
                raise DataError(f"The image {name} is not under --image_roots, so it cannot be drawn: "
                                "pass the folder that holds it, or drop --overlay_dir.")
    with_points = [n for n, g, p in zip(names, gt_xy, pred_xy) if len(g) or len(p)]
    spacing_mm = spacing_per_name(names, with_points, spacing, finder)
    return EvalImages(names, gt_xy, pred_xy, pred_conf, sizes[:, 0], sizes[:, 1], finder, spacing_mm)


def spacing_per_name(names: list[str], with_points: list[str], spacing_csv: dict[str, float] | None,
                     finder: ImageFinder | None) -> np.ndarray | None:
    """mm per pixel for each of `names`: the spacing CSV's row, else (for the images with points,
    the only ones a distance is measured on) the DICOM header's PixelSpacing or ImagerPixelSpacing;
    NaN for neither. None without a spacing CSV and without any DICOM spacing."""
    own = dict(spacing_csv or {})
    for name in with_points:
        path = finder.find(name) if finder is not None and name not in own else None
        if path is not None and is_dicom(path):
            try:
                header = read_dicom_header(path)
            except ValueError:
                raise DataError(f"The image {path} cannot be read: replace the file or remove it from the inputs.")
            if header.spacing_mm is not None:
                own[name] = header.spacing_mm
    if not own and spacing_csv is None:
        return None
    return np.array([own.get(n, np.nan) for n in names])


def read_gate_csv(path: str | Path, threshold: float | None = None) -> dict[str, bool]:
    """A classifier's CSV (file_name,label,confidence) as {file_name: gated}: True where the
    classifier calls the image No Finding, or, with `threshold`, scores it below that."""
    table = read_table(path, ("file_name", "label", "confidence"), "--gate_csv", text_columns=("file_name", "label"))
    names = table["file_name"].str.strip()
    if threshold is not None:
        gated = pd.to_numeric(table["confidence"], errors="coerce").to_numpy() < threshold
    else:
        gated = (table["label"].str.strip() == "No Finding").to_numpy()
    return dict(zip(names, (bool(g) for g in gated)))

