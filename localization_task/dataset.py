"""NoduLoCC localization data: labels, image discovery and pre-processing.

Source: the NoduLoCC2026 challenge data, laid out under a data root (default
`data/nodulocc`, relative to the repository root):

    data/nodulocc/
        classification_labels.csv file_name,label,LIDC_ID  one row per image;
                                  label 'Nodule' | 'No Finding', LIDC_ID only
                                  for LIDC images
        localization_labels.csv   file_name,x,y  one row per nodule, original px
        nih_filtered_images/      NIH ChestX-ray14 PNGs named PPPPPPPP_FFF.png
                                  (patient, follow-up; mostly 8-bit 1024x1024)
        lidc_png_16_bit/          LIDC-derived 16-bit PNGs (e.g. 2022x2022)

`load_localization_data` joins the two label files into one table of images
with their keypoints; `heatmap/data.py` turns its rows into training items.

Pre-processing (what the CheXagent-2 reference did): any PNG/JPEG mode, or a
DICOM's display values (`dicom.py`), -> grey -> per-image percentile clip (0.5 / 99.5 %) -> rescale to 0-255 uint8 -> RGB.
The percentiles come from the tails of an integer image (`common/percentiles.py`),
so a 16-bit 2k x 2k image costs no sort, and they equal `np.percentile(..., method="linear")`
exactly.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from localization_task.common.dicom import is_dicom, read_dicom_grey, read_dicom_header
from localization_task.common.errors import IMAGE_SUFFIXES, DataError, safe_join
from localization_task.common.percentiles import exact_percentiles
from localization_task.common.split_file import patient_id


DEFAULT_DATA_ROOT = Path("data/nodulocc")
CLASSIFICATION_CSV = "classification_labels.csv"
LOCALIZATION_CSV = "localization_labels.csv"
IMAGE_DIRS: tuple[str, ...] = ("nih_filtered_images", "lidc_png_16_bit")
LABEL_TO_INT = {"No Finding": 0, "Nodule": 1}
DEFAULT_CLIP_LOW_PCT = 0.5
DEFAULT_CLIP_HIGH_PCT = 99.5

_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# --- file names -------------------------------------------------------------


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header (a DICOM's Columns and Rows), without decoding the pixels."""
    if is_dicom(path):
        header = read_dicom_header(path)
        return header.width_px, header.height_px
    with Image.open(path) as image:
        return image.size


def discover_images(input_dir: Path, recursive: bool = False) -> list[Path]:
    """PNG/JPEG/DICOM files in `input_dir`, sorted by their relative posix path."""
    candidates = input_dir.rglob("*") if recursive else input_dir.iterdir()
    images = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(images, key=lambda p: p.relative_to(input_dir).as_posix())


# --- label tables -------------------------------------------------------------


def read_table(path: str | Path, required: tuple[str, ...], what: str,
               text_columns: tuple[str, ...] = ("file_name",)) -> pd.DataFrame:
    """A CSV file with the `required` columns and no empty file_name; `what` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The {what} file {path} does not exist: check the path.")
    try:
        # Only an empty field is missing: text such as "nan" or "NA" stays text, so a
        # coordinate written as NaN is refused below instead of passing for "no point".
        df = pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False,
                         na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"The {what} file {path} is not a readable CSV file ({reason}): fix or regenerate it.")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"The {what} file {path} lacks the column(s) {', '.join(missing)}: "
            f"it needs a header with {','.join(required)}."
        )
    if df["file_name"].isna().any():
        row = int(np.flatnonzero(df["file_name"].isna().to_numpy())[0]) + 2
        raise DataError(f"The {what} file {path} has an empty file_name on line {row}: "
                        "fill it in or drop the row.")
    return df


def _parses_as_nan(value) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _numeric_column(df: pd.DataFrame, column: str, path: Path, what: str,
                    nan_text_ok: bool = False) -> np.ndarray:
    """The column as floats, NaN where the field is empty. Non-numeric text, infinity and
    (unless `nan_text_ok`) the text NaN are refused, naming the first bad line."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    given = df[column].notna().to_numpy()
    nan_text = np.zeros(len(values), dtype=bool)
    for row in np.flatnonzero(np.isnan(values) & given):
        nan_text[row] = _parses_as_nan(df[column].iloc[row])
    non_numeric = np.isnan(values) & given & ~nan_text
    not_finite = np.isinf(values) | (nan_text & (not nan_text_ok))
    bad = np.flatnonzero(non_numeric | not_finite)
    if len(bad) == 0:
        return values
    row = int(bad[0])
    where = f"The {what} file {path} has"
    if non_numeric[row]:
        raise DataError(f"{where} a non-numeric {column} on line {row + 2}: fix that value.")
    empty = "leave it empty" if column == "confidence" else "leave x and y empty for an image without nodules"
    raise DataError(f"{where} a {column} that is not finite ({df[column].iloc[row]}) on line {row + 2}: "
                    f"give a finite number, or {empty}.")


def points_by_image(df: pd.DataFrame, path: Path, what: str) -> tuple[dict, dict]:
    """`file_name,x,y[,confidence]` rows grouped by image, in order of first appearance:
    ({file_name: (k, 2) x, y}, {file_name: (k,) confidence, NaN without the column}).
    Rows with empty x and y only register the image."""
    x = _numeric_column(df, "x", path, what)
    y = _numeric_column(df, "y", path, what)
    conf = (_numeric_column(df, "confidence", path, what, nan_text_ok=True) if "confidence" in df
            else np.full(len(df), np.nan))
    half = np.isnan(x) != np.isnan(y)
    if half.any():
        line = int(np.flatnonzero(half)[0]) + 2
        raise DataError(f"The {what} file {path} has only one of x and y on line {line}: "
                        "give both or neither.")
    xy, confidence = {}, {}
    for name, rows in df.groupby("file_name", sort=False).indices.items():
        rows = rows[~np.isnan(x[rows])]
        xy[str(name)] = np.stack([x[rows], y[rows]], axis=1).reshape(-1, 2)
        confidence[str(name)] = conf[rows]
    return xy, confidence


def read_ground_truth(path: str | Path) -> dict[str, np.ndarray]:
    """`localization_labels.csv` as ``{file_name: (k, 2) array of x, y in original px}``.

    One row per nodule; a row with empty x and y registers an image without one.
    """
    df = read_table(path, ("file_name", "x", "y"), "ground-truth")
    xy, _ = points_by_image(df, Path(path), "ground-truth")
    return xy


# --- the labelled NoduLoCC localization set -----------------------------------


def load_localization_data(data_root: str | Path = DEFAULT_DATA_ROOT) -> pd.DataFrame:
    """Every image of `classification_labels.csv` with its keypoints, one row each.

    Columns: `file_name`; `path` (str, the image in `nih_filtered_images/`,
    else `lidc_png_16_bit/`); `label` (1 Nodule, 0 No Finding); `lidc_id`
    ('' for NIH images); `patient_id` (`nih:PPPPPPPP`, `lidc:<LIDC_ID>`, else
    `file:<file_name>`: split on it, not on images); `points_px` ((k, 2) float
    array of x, y in original pixels, (0, 2) without keypoints).

    Rows follow the classification CSV, then images found only in
    `localization_labels.csv`. An image with keypoints counts as Nodule, also
    when the classification CSV says otherwise or lacks it. No image is opened:
    sizes are left to whoever reads the pixels.
    """
    data_root = Path(data_root)
    classification_csv, localization_csv = data_root / CLASSIFICATION_CSV, data_root / LOCALIZATION_CSV
    for csv_path in (classification_csv, localization_csv):
        if not csv_path.is_file():
            raise DataError(f"labels file {csv_path} not found: put the NoduLoCC data under "
                            f"{DEFAULT_DATA_ROOT} or pass the right data root.")
    labels = read_table(classification_csv, ("file_name", "label"), "classification-labels",
                        text_columns=("file_name", "label", "LIDC_ID"))
    unknown = sorted(set(labels["label"].fillna("")) - set(LABEL_TO_INT))
    if unknown:
        raise DataError(f"labels file {classification_csv} has the label(s) {unknown[:3]}: "
                        "use 'Nodule' or 'No Finding'.")
    points = read_ground_truth(localization_csv)
    listed = set(labels["file_name"])
    extra = [name for name in points if name not in listed]
    lidc_ids = labels["LIDC_ID"].fillna("") if "LIDC_ID" in labels else pd.Series([""] * len(labels))
    frame = pd.DataFrame({
        "file_name": [*labels["file_name"], *extra],
        "label": [*labels["label"].map(LABEL_TO_INT), *[1] * len(extra)],
        "lidc_id": [*lidc_ids, *[""] * len(extra)],
    })
    frame["points_px"] = pd.Series(
        [points.get(name, np.zeros((0, 2))) for name in frame["file_name"]], index=frame.index, dtype=object
    )
    frame.loc[frame["points_px"].map(len) > 0, "label"] = 1
    # Where each image is named: a keypointed image by its keypoint row, the others by their label row.
    sources = [localization_csv if name in points and len(points[name]) else classification_csv
               for name in frame["file_name"]]
    frame["path"] = _find_images(data_root, list(frame["file_name"]), sources)
    frame["patient_id"] = [patient_id(name, lidc) for name, lidc in zip(frame["file_name"], frame["lidc_id"])]
    return frame[["file_name", "path", "label", "lidc_id", "patient_id", "points_px"]]


def find_image(data_root: Path, file_name: str) -> Path | None:
    """The image in `nih_filtered_images/`, else `lidc_png_16_bit/`; None if in neither."""
    for folder in IMAGE_DIRS:
        path = safe_join(data_root / folder, file_name)
        if path.is_file():
            return path
    return None


def _find_images(data_root: Path, names: list[str], sources: list[Path]) -> list[str]:
    paths = [find_image(data_root, name) for name in names]
    missing = [i for i, path in enumerate(paths) if path is None]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        folders = " or ".join(str(data_root / d) for d in IMAGE_DIRS)
        line = csv_line(sources[first], names[first])
        raise DataError(
            f"image {names[first]!r} on line {line} of {sources[first]}{more} is not in {folders}: "
            "copy the images there, drop its rows, or pass the data root that holds them."
        )
    return [str(path) for path in paths]


def csv_line(path: Path, file_name: str, xy: tuple[float, float] | None = None) -> int | None:
    """The line (header = 1) of the first row of `path` naming `file_name` (at `xy`, if given)."""
    table = read_table(path, ("file_name",), "labels")
    rows = table["file_name"] == file_name
    if xy is not None:
        for column, value in zip(("x", "y"), xy):
            rows &= np.isclose(pd.to_numeric(table[column], errors="coerce"), value)
    hits = np.flatnonzero(rows.to_numpy())
    return int(hits[0]) + 2 if len(hits) else None


def check_keypoints_inside(frame: pd.DataFrame, localization_csv: Path) -> None:
    """Refuse a keypoint outside its image, naming its CSV line and the image size (before any training).

    Reads only the header of each image with keypoints (about a hundred on the
    real data); an unreadable header is left to the training's unreadable-image
    handling.
    """
    for name, path, points in zip(frame["file_name"], frame["path"], frame["points_px"]):
        if len(points) == 0:
            continue
        try:
            width, height = image_size(Path(path))
        except OSError:
            continue
        x, y = points[:, 0], points[:, 1]
        outside = np.flatnonzero((x < 0) | (x >= width) | (y < 0) | (y >= height))
        if len(outside):
            bad = tuple(float(v) for v in points[outside[0]])
            raise DataError(
                f"line {csv_line(localization_csv, name, bad)} of {localization_csv} puts a keypoint of {name} at "
                f"({bad[0]:g}, {bad[1]:g}), outside the image ({width} x {height} px): fix the coordinates "
                "or drop the row.")


# --- pre-processing ---------------------------------------------------------


def to_grey_array(image: Image.Image) -> np.ndarray:
    """Grey pixels of any mode: uint8 ('L', colour, palette), uint16 (16-bit
    grey), int32 ('I') or float32 ('F'). Colour uses Pillow's ITU-R 601 luma;
    alpha is dropped (radiograph PNGs with alpha are opaque)."""
    if image.mode in _UINT16_MODES:
        return np.asarray(image).astype(np.uint16)
    if image.mode in ("L", "I", "F"):
        return np.asarray(image)
    if image.mode != "RGB":
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return np.asarray(image.convert("L"))


def _rescale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:  # flat image: nothing to stretch
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def percentile_clip_to_uint8(
    grey: np.ndarray,
    clip_low_pct: float = DEFAULT_CLIP_LOW_PCT,
    clip_high_pct: float = DEFAULT_CLIP_HIGH_PCT,
) -> np.ndarray:
    """Clip to the image's own percentiles and stretch linearly to 0-255."""
    low, high = exact_percentiles(grey, (clip_low_pct, clip_high_pct))
    if grey.dtype in (np.uint8, np.uint16):
        # Integer image: map through a lookup table (one entry per grey level).
        lut = _rescale_to_uint8(np.arange(int(grey.max()) + 1, dtype=np.float64), low, high)
        return lut[grey]
    return _rescale_to_uint8(grey.astype(np.float64), low, high)


def preprocess_image(
    image: Image.Image,
    clip_low_pct: float = DEFAULT_CLIP_LOW_PCT,
    clip_high_pct: float = DEFAULT_CLIP_HIGH_PCT,
) -> Image.Image:
    """Any radiograph -> 8-bit RGB of the same size, percentile-normalised."""
    grey_u8 = percentile_clip_to_uint8(to_grey_array(image), clip_low_pct, clip_high_pct)
    return Image.fromarray(grey_u8).convert("RGB")


def read_grey(path: str | Path) -> np.ndarray:
    """The grey pixels of a PNG/JPEG (see to_grey_array) or a DICOM's display values (see dicom.py).

    Raises OSError (Pillow) or ValueError (DicomError) if the file cannot be decoded."""
    if is_dicom(path):
        return read_dicom_grey(path)
    with Image.open(path) as image:
        image.load()
        return to_grey_array(image)


def load_preprocessed(
    path: Path,
    clip_low_pct: float = DEFAULT_CLIP_LOW_PCT,
    clip_high_pct: float = DEFAULT_CLIP_HIGH_PCT,
) -> Image.Image:
    """Read an image file and pre-process it (raises OSError or ValueError if unreadable)."""
    grey_u8 = percentile_clip_to_uint8(read_grey(path), clip_low_pct, clip_high_pct)
    return Image.fromarray(grey_u8).convert("RGB")


class UnreadableImage(DataError):
    """An image file that cannot be decoded; `reason` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"image {path} cannot be read ({reason}); replace it or remove its rows from the label CSVs.")
        self.reason = reason


def read_stretched(path: str, clip_low_pct: float = DEFAULT_CLIP_LOW_PCT,
                   clip_high_pct: float = DEFAULT_CLIP_HIGH_PCT) -> np.ndarray:
    """Any radiograph file -> (height, width) uint8 after the per-image percentile stretch."""
    try:
        grey = read_grey(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, f"{type(err).__name__}: {err}") from None
    return percentile_clip_to_uint8(grey, clip_low_pct, clip_high_pct)
