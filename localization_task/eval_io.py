"""Input and output for the localization evaluator (``localization_task/metrics.py``).

Readers turn user files into plain arrays and raise :class:`InputError` with
one plain sentence naming the file and what to do; the evaluator prints that
sentence and exits with status 2. Writers replace their target atomically.

Formats read:
- ground truth ``localization_labels.csv``: ``file_name,x,y``, one row per
  nodule in original pixel coordinates; a row with empty ``x`` and ``y`` marks
  an image with no nodule.
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
from PIL import Image

from localization_task.dataset import DataError, safe_join
from localization_task.run_files import JsonLineError, iter_jsonl

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class InputError(Exception):
    """A problem with a user's file, reported as one sentence and exit status 2."""


@dataclass
class Predictions:
    """Predicted points per image; ``sizes`` holds (width, height) where the file gives it."""

    xy: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, int]]


def _read_csv(path: str | Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The {what} file {path} does not exist: check the path.")
    try:
        df = pd.read_csv(path, dtype={"file_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"The {what} file {path} is not a readable CSV file ({reason}): fix or regenerate it.")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(
            f"The {what} file {path} lacks the column(s) {', '.join(missing)}: "
            f"it needs a header with {','.join(required)}."
        )
    if df["file_name"].isna().any():
        row = int(np.flatnonzero(df["file_name"].isna().to_numpy())[0]) + 2
        raise InputError(f"The {what} file {path} has an empty file_name on line {row}: "
                         "fill it in or drop the row.")
    return df


def _numeric_column(df: pd.DataFrame, column: str, path: Path, what: str) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & df[column].notna().to_numpy()
    bad |= np.isinf(values)
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        raise InputError(f"The {what} file {path} has a non-numeric {column} on line {line}: fix that value.")
    return values


def _points_from_table(df: pd.DataFrame, path: Path, what: str) -> tuple[dict, dict]:
    """Group rows by file name; rows with empty x and y only register the image."""
    x = _numeric_column(df, "x", path, what)
    y = _numeric_column(df, "y", path, what)
    conf = _numeric_column(df, "confidence", path, what) if "confidence" in df else np.full(len(df), np.nan)
    half = np.isnan(x) != np.isnan(y)
    if half.any():
        line = int(np.flatnonzero(half)[0]) + 2
        raise InputError(f"The {what} file {path} has only one of x and y on line {line}: "
                         "give both or neither.")
    xy, confidence = {}, {}
    for name, rows in df.groupby("file_name", sort=False).indices.items():
        rows = rows[~np.isnan(x[rows])]
        xy[str(name)] = np.stack([x[rows], y[rows]], axis=1).reshape(-1, 2)
        confidence[str(name)] = conf[rows]
    return xy, confidence


def read_ground_truth(path: str | Path) -> dict[str, np.ndarray]:
    """Ground-truth points per image as ``{file_name: (k, 2) array of x, y in px}``."""
    df = _read_csv(path, ("file_name", "x", "y"), "ground-truth")
    xy, _ = _points_from_table(df, Path(path), "ground-truth")
    return xy


def _jsonl_record(record, number: int, path: Path) -> tuple[str, np.ndarray, np.ndarray, tuple | None]:
    where = f"The predictions file {path}, line {number},"
    try:
        name = record["file_name"]
        points = record["points"] or []
        xy = np.array([[float(p["x"]), float(p["y"])] for p in points], dtype=np.float64).reshape(-1, 2)
        conf = np.array([float(p.get("confidence", np.nan)) for p in points], dtype=np.float64)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(
            f"{where} lacks file_name or points with numeric x and y: each record needs "
            '{"file_name": ..., "points": [{"x": ..., "y": ...}]}.'
        )
    if not np.isfinite(xy).all():
        raise InputError(f"{where} has a non-finite coordinate: fix that point.")
    size = None
    if record.get("width") is not None and record.get("height") is not None:
        try:
            size = (int(record["width"]), int(record["height"]))
        except (TypeError, ValueError):
            size = None
        if size is None or min(size) <= 0:
            raise InputError(f"{where} has a width/height that is not a positive whole number: fix or drop them.")
    return str(name), xy, conf, size


def read_predictions(path: str | Path) -> Predictions:
    """Predictions from ``localization_test_results.csv`` or ``predictions.jsonl`` (by suffix)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        df = _read_csv(path, ("file_name", "x", "y"), "predictions")
        xy, conf = _points_from_table(df, path, "predictions")
        return Predictions(xy, conf, {})
    if not path.is_file():
        raise InputError(f"The predictions file {path} does not exist: check the path.")
    preds = Predictions({}, {}, {})
    try:
        for number, record in iter_jsonl(path):
            name, xy, conf, size = _jsonl_record(record, number, path)
            preds.xy[name], preds.confidence[name] = xy, conf  # as in the resume cache, a later record wins
            if size is not None:
                preds.sizes[name] = size
    except JsonLineError as err:
        raise InputError(f"The predictions file {path}, line {err.line_no}, is not valid JSON: "
                         "regenerate the file or delete that line.") from None
    return preds


def read_image_list(path: str | Path) -> list[str]:
    """File names from a text file (one per line, ``#`` comments) or a CSV with ``file_name``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return [str(n) for n in pd.unique(_read_csv(path, ("file_name",), "image-list")["file_name"])]
    if not path.is_file():
        raise InputError(f"The image-list file {path} does not exist: check the path.")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))


class ImageFinder:
    """Finds an image under several roots: ``root/file_name`` first, then by basename anywhere below."""

    def __init__(self, roots: list[str] | tuple[str, ...]):
        self.roots = [Path(r) for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise InputError(f"The image root {root} is not a folder: check --image_roots.")
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
        try:
            safe_join(self.roots[0], file_name)  # names from the input files never leave the roots
        except DataError as err:
            raise InputError(str(err)) from None
        for root in self.roots:
            if (root / file_name).is_file():
                return root / file_name
        return self._index().get(Path(file_name).name)

    def all_names(self) -> list[str]:
        """Basenames of every image file under the roots."""
        return sorted(self._index())


def image_size(file_name: str, sizes: dict[str, tuple[int, int]],
               finder: ImageFinder | None) -> tuple[int, int]:
    """(width, height) from the predictions file, else from the image header; InputError if neither."""
    if file_name in sizes:
        return sizes[file_name]
    path = finder.find(file_name) if finder is not None else None
    if path is None:
        roots = ", ".join(str(r) for r in finder.roots) if finder else "none given"
        raise InputError(
            f"The size of image {file_name} is unknown (predictions give no width/height and it is not under "
            f"--image_roots: {roots}): pass the folder that holds it with --image_roots."
        )
    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        raise InputError(f"The image {path} cannot be read: replace the file or remove it from the inputs.")
