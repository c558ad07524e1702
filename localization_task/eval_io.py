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
- an image list: a text file with one file name per line, or a CSV file with
  a ``file_name`` column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from localization_task.dataset import (
    IMAGE_SUFFIXES, DataError, image_size, points_by_image, read_table, safe_join,
)
from localization_task.run_files import JsonLineError, iter_jsonl


@dataclass
class Predictions:
    """Predicted points per image; ``sizes`` holds (width, height) where the file gives it."""

    xy: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, int]]


def _jsonl_record(record, number: int, path: Path) -> tuple[str, np.ndarray, np.ndarray, tuple | None]:
    where = f"The predictions file {path}, line {number},"
    try:
        name = record["file_name"]
        points = record["points"] or []
        xy = np.array([[float(p["x"]), float(p["y"])] for p in points], dtype=np.float64).reshape(-1, 2)
        conf = np.array([float(p.get("confidence", np.nan)) for p in points], dtype=np.float64)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(
            f"{where} lacks file_name or points with numeric x and y: each record needs "
            '{"file_name": ..., "points": [{"x": ..., "y": ...}]}.'
        )
    if not np.isfinite(xy).all():
        raise DataError(f"{where} has a non-finite coordinate: fix that point.")
    size = None
    if record.get("width") is not None and record.get("height") is not None:
        try:
            size = (int(record["width"]), int(record["height"]))
        except (TypeError, ValueError):
            size = None
        if size is None or min(size) <= 0:
            raise DataError(f"{where} has a width/height that is not a positive whole number: fix or drop them.")
    return str(name), xy, conf, size


def read_predictions(path: str | Path) -> Predictions:
    """Predictions from ``localization_test_results.csv`` or ``predictions.jsonl`` (by suffix)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        df = read_table(path, ("file_name", "x", "y"), "predictions")
        xy, conf = points_by_image(df, path, "predictions")
        return Predictions(xy, conf, {})
    if not path.is_file():
        raise DataError(f"The predictions file {path} does not exist: check the path.")
    preds = Predictions({}, {}, {})
    try:
        for number, record in iter_jsonl(path):
            name, xy, conf, size = _jsonl_record(record, number, path)
            preds.xy[name], preds.confidence[name] = xy, conf  # as in the resume cache, a later record wins
            if size is not None:
                preds.sizes[name] = size
    except JsonLineError as err:
        raise DataError(f"The predictions file {path}, line {err.line_no}, is not valid JSON: "
                        "regenerate the file or delete that line.") from None
    return preds


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
    """Finds an image under several roots: ``root/file_name`` first, then a PNG/JPEG of that basename
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
        """Basenames of every PNG/JPEG file under the roots."""
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
    except OSError:
        raise DataError(f"The image {path} cannot be read: replace the file or remove it from the inputs.")
