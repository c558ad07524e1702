"""NoduLoCC classification data: labels, image loading, pre-processing and the torch Dataset.

Source: the NoduLoCC2026 challenge data, laid out under a data root
(default `data/nodulocc`):

    classification_labels.csv   file_name,label,LIDC_ID  (label: Nodule | No Finding)
    nih_filtered_images/        NIH ChestX-ray14 PNGs, PPPPPPPP_FFF.png, mostly 8-bit
    lidc_png_16_bit/            LIDC-derived 16-bit PNGs

Each `file_name` is looked up in the NIH folder, then the LIDC folder; names
that would leave those folders are refused. Images may be PNG, JPEG or DICOM
(`.dcm`, see dicom.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from classification_task.common.dicom import is_dicom, read_dicom_grey
from classification_task.common.errors import DataError, safe_join
from classification_task.common.percentiles import exact_percentiles
from classification_task.common.run_files import atomic_output
from classification_task.common.split_file import patient_id

LABELS_CSV = "classification_labels.csv"
IMAGE_FOLDERS = ("nih_filtered_images", "lidc_png_16_bit")
LABEL_TO_INT = {"No Finding": 0, "Nodule": 1}
INT_TO_LABEL = {v: k for k, v in LABEL_TO_INT.items()}
PLAIN_NAME = re.compile(r"[^/\\:]+")  # no folder part, no drive: safe_join accepts it unless it is ".."


# ----------------------------------------------------------------------------- labels


def resolve_image_path(data_root: Path, file_name: str) -> Path | None:
    """The image for `file_name` in the NIH or LIDC folder, or None if it is in neither."""
    for folder in IMAGE_FOLDERS:
        path = safe_join(data_root / folder, file_name)
        if path.is_file():
            return path
    return None


def read_csv_table(path: Path, columns: Sequence[str], if_missing: str) -> pd.DataFrame:
    """A CSV as text with these columns and one row per stripped `file_name`.

    Problems raise DataError naming `path`; `if_missing` says what to do when it does not exist.
    """
    if not path.is_file():
        raise DataError(f"{path} not found; {if_missing}.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} could not be read as CSV ({exc.__class__.__name__}); "
                        "save it as comma-separated text.") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; it needs the columns {', '.join(columns)}.")
    frame["file_name"] = frame["file_name"].str.strip()
    duplicated = frame["file_name"][frame["file_name"].duplicated()]
    if len(duplicated):
        raise DataError(f"{path} lists {duplicated.iloc[0]} (and {len(duplicated) - 1} other "
                        f"file names) more than once; keep one row per image.")
    return frame


def read_labels_csv(path: Path, if_missing: str) -> pd.DataFrame:
    """`classification_labels.csv` alone, no image looked at: columns file_name, label (0/1), lidc_id."""
    frame = read_csv_table(path, ("file_name", "label"), if_missing)
    labels = frame["label"].str.strip()
    unknown = sorted(set(labels) - set(LABEL_TO_INT))
    if unknown:
        raise DataError(f"{path} has unknown label values {unknown[:3]}; use only "
                        f"'Nodule' or 'No Finding' in the label column.")
    lidc_ids = frame["LIDC_ID"] if "LIDC_ID" in frame.columns else pd.Series([""] * len(frame))
    return pd.DataFrame({"file_name": frame["file_name"], "label": labels.map(LABEL_TO_INT).astype(int),
                         "lidc_id": lidc_ids.astype(str)})


def load_labels(data_root: str | Path) -> pd.DataFrame:
    """`classification_labels.csv` with each image found: columns file_name, label (0/1), lidc_id, path, patient_id."""
    data_root = Path(data_root)
    csv_path = data_root / LABELS_CSV
    frame = read_labels_csv(csv_path, f"point --data_root at the folder holding {LABELS_CSV}")
    paths = find_image_paths(data_root, frame["file_name"].tolist())
    absent = [name for name, path in zip(frame["file_name"], paths) if path is None]
    if absent:
        raise DataError(
            f"{len(absent)} image(s) listed in {csv_path} are missing from {data_root}/{{{','.join(IMAGE_FOLDERS)}}}, "
            f"e.g. {absent[0]!r}; copy the images there or remove those rows."
        )
    patients = [patient_id(name, lidc_id) for name, lidc_id in zip(frame["file_name"], frame["lidc_id"])]
    return frame.assign(path=paths, patient_id=patients)


def _files_in(folder: Path) -> list[str]:
    """Names of the files (symlinks to files included) directly in `folder`; none if it does not exist."""
    try:
        with os.scandir(folder) as entries:
            return [entry.name for entry in entries if entry.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def find_image_paths(data_root: Path, file_names: list[str]) -> list[str | None]:
    """`resolve_image_path` for many names at once, as strings.

    One listing per image folder answers the plain names (no folder part), so
    63k rows cost two directory reads, not 126k `stat` calls; any other name,
    or one the listings miss, takes the per-name path with all its checks.
    """
    listed = {}
    for folder in reversed(IMAGE_FOLDERS):  # the first folder wins
        prefix = os.path.join(data_root / folder, "")
        listed.update((name, prefix + name) for name in _files_in(data_root / folder))
    paths = [listed.get(name) if PLAIN_NAME.fullmatch(name) and name != ".." else None for name in file_names]
    for index in [i for i, path in enumerate(paths) if path is None]:
        path = resolve_image_path(data_root, file_names[index])
        paths[index] = None if path is None else str(path)
    return paths


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Preprocessing:
    """Per-image percentile contrast stretch, then an optional resize for the model."""

    clip_low_pct: float = 0.5
    clip_high_pct: float = 99.5
    size_px: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.clip_low_pct < self.clip_high_pct <= 100:
            raise ValueError("percentiles need 0 <= clip_low_pct < clip_high_pct <= 100.")


def read_grey(path: str | Path) -> np.ndarray:
    """Decode any PNG/JPEG mode, or a DICOM's display values, to a 2-D grey array, keeping 16-bit depth."""
    if is_dicom(path):
        return read_dicom_grey(path)
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels = np.asarray(image)
            if pixels.dtype == np.uint16:  # native 16-bit: nothing to check
                return pixels
            return pixels.astype(np.uint16) if pixels.min() >= 0 and pixels.max() < 65536 else pixels
        if image.mode == "F":
            return np.asarray(image, dtype=np.float32)
        # RGB, RGBA (alpha ignored), palette, LA, 1: Pillow's luminance conversion.
        return np.asarray(image.convert("L"))


def clip_bounds(pixels: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    """The [low_pct, high_pct] percentiles of an image, exactly as np.percentile gives them."""
    low, high = exact_percentiles(pixels, (low_pct, high_pct))
    return low, high


def stretch_to_uint8(pixels: np.ndarray, low_pct: float, high_pct: float) -> np.ndarray:
    """Clip to the [low_pct, high_pct] percentiles and rescale to 0-255."""
    low, high = clip_bounds(pixels, low_pct, high_pct)
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (np.clip(pixels.astype(np.float32), low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def load_image(path: str | Path, prep: Preprocessing = Preprocessing()) -> Image.Image:
    """Any radiograph file -> contrast-stretched 8-bit RGB image (resized if prep.size_px)."""
    grey = Image.fromarray(stretch_to_uint8(read_grey(path), prep.clip_low_pct, prep.clip_high_pct))
    if prep.size_px:
        grey = grey.resize((prep.size_px, prep.size_px), Image.Resampling.BILINEAR)
    return grey.convert("RGB")


class ImageCache:
    """Pre-processed images on disk, keyed by file identity and pre-processing settings."""

    def __init__(self, folder: str | Path, prep: Preprocessing):
        self.folder = Path(folder)
        self.prep = prep
        self.folder.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path) -> Path:
        stat = path.stat()
        ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.prep}"
        return self.folder / f"{hashlib.sha1(ident.encode()).hexdigest()}.png"

    def load(self, path: str | Path) -> Image.Image:
        cached = self._key(Path(path))
        if cached.is_file():
            with Image.open(cached) as image:
                return image.convert("RGB")
        image = load_image(path, self.prep)
        with atomic_output(cached, suffix=".png") as tmp:
            image.convert("L").save(tmp)
        return image


class RadiographDataset(Dataset):
    """(image, label) items from a labels frame with `path` and `label` columns.

    An image that cannot be decoded (missing, truncated, not an image) gives
    image None with the reason in `error`, so that one bad file does not end a
    run: the collator leaves it out and the run counts it (see common/unreadable.py).
    """

    def __init__(self, frame: pd.DataFrame, prep: Preprocessing = Preprocessing(), cache_dir: str | None = None):
        self.paths = frame["path"].tolist()
        self.file_names = frame["file_name"].tolist() if "file_name" in frame else self.paths
        self.labels = frame["label"].to_numpy(dtype=np.int64)
        self.prep = prep
        self.cache = ImageCache(cache_dir, prep) if cache_dir else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        item = {"file_name": self.file_names[index], "label": int(self.labels[index])}
        try:
            image = self.cache.load(path) if self.cache else load_image(path, self.prep)
        except Exception as err:  # Pillow raises many types; one bad file must not end a long run
            return {**item, "image": None, "error": f"{type(err).__name__}: {err}"}
        return {**item, "image": image}
