"""NoduLoCC localization data: labels, image discovery and pre-processing.

Source: the NoduLoCC2026 challenge data, laid out under a data root (default
`data/nodulocc`, relative to the repository root):

    data/nodulocc/
        localization_labels.csv   file_name,x,y  one row per nodule, original px
        nih_filtered_images/      NIH ChestX-ray14 PNGs (mostly 8-bit 1024x1024)
        lidc_png_16_bit/          LIDC-derived 16-bit PNGs (e.g. 2022x2022)

Pre-processing (what the CheXagent-2 reference did): any PNG/JPEG mode -> grey
-> per-image percentile clip (0.5 / 99.5 %) -> rescale to 0-255 uint8 -> RGB.
The percentiles come from an integer histogram, so a 16-bit 2k x 2k image
costs one `np.bincount` instead of a sort, and they equal
`np.percentile(..., method="linear")` exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
from PIL import Image

DEFAULT_DATA_ROOT = Path("data/nodulocc")
LABELS_CSV = "localization_labels.csv"
IMAGE_DIRS: tuple[str, ...] = ("nih_filtered_images", "lidc_png_16_bit")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CLIP_LOW_PCT = 0.5
DEFAULT_CLIP_HIGH_PCT = 99.5

_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_MAX_HISTOGRAM_BINS = 1 << 16  # wider integer ranges fall back to np.percentile


class DataError(ValueError):
    """A problem with the user's data; the message is one plain sentence."""


# --- file names -------------------------------------------------------------


def safe_join(folder: Path, file_name: str) -> Path:
    """`folder / file_name`, refusing names that could leave `folder`."""
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    if (
        not file_name.strip()
        or posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or ".." in posix.parts
        or ".." in windows.parts
    ):
        raise DataError(
            f"file name {file_name!r} would escape its image folder {folder}: "
            "use a plain path relative to that folder, without '..' or a leading '/'."
        )
    return folder / posix


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.size


def discover_images(input_dir: Path, recursive: bool = False) -> list[Path]:
    """PNG/JPEG files in `input_dir`, sorted by their relative posix path."""
    candidates = input_dir.rglob("*") if recursive else input_dir.iterdir()
    images = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(images, key=lambda p: p.relative_to(input_dir).as_posix())


# --- labels -----------------------------------------------------------------


def load_localization_labels(csv_path: Path) -> pd.DataFrame:
    """`file_name,x,y` rows (several per image), validated."""
    if not csv_path.is_file():
        raise DataError(
            f"labels file {csv_path} not found: put the NoduLoCC data under "
            f"{DEFAULT_DATA_ROOT} or pass the right data root."
        )
    labels = pd.read_csv(csv_path, dtype={"file_name": str})
    missing = {"file_name", "x", "y"} - set(labels.columns)
    if missing:
        raise DataError(
            f"labels file {csv_path} lacks the column(s) {', '.join(sorted(missing))}: "
            "it must have the header file_name,x,y."
        )
    coords = labels[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    if coords.isna().any().any() or labels["file_name"].isna().any():
        raise DataError(
            f"labels file {csv_path} has empty or non-numeric file_name/x/y values: "
            "fix those rows."
        )
    labels[["x", "y"]] = coords.astype(float)
    return labels


@dataclass(frozen=True)
class LabelledImage:
    file_name: str
    path: Path
    width_px: int
    height_px: int
    points_px: np.ndarray  # (n, 2): x, y in original pixels


class NoduLoCCLocalization:
    """NoduLoCC2026 localization set: one `LabelledImage` per labelled image.

    Images are looked up in `nih_filtered_images/` then `lidc_png_16_bit/`;
    sizes come from headers only, so building the index decodes no pixels.
    """

    def __init__(
        self,
        data_root: Path = DEFAULT_DATA_ROOT,
        labels_csv: str = LABELS_CSV,
        image_dirs: Sequence[str] = IMAGE_DIRS,
    ):
        self.data_root = Path(data_root)
        self.image_dirs = tuple(image_dirs)
        labels = load_localization_labels(self.data_root / labels_csv)
        self.items = [
            self._item(name, rows[["x", "y"]].to_numpy(dtype=float))
            for name, rows in labels.groupby("file_name", sort=True)
        ]

    def _item(self, file_name: str, points_px: np.ndarray) -> LabelledImage:
        path = self.find_image(file_name)
        width_px, height_px = image_size(path)
        return LabelledImage(file_name, path, width_px, height_px, points_px)

    def find_image(self, file_name: str) -> Path:
        for folder in self.image_dirs:
            path = safe_join(self.data_root / folder, file_name)
            if path.is_file():
                return path
        folders = " or ".join(str(self.data_root / d) for d in self.image_dirs)
        raise DataError(
            f"image {file_name!r} from the labels is not in {folders}: check the data root."
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LabelledImage:
        return self.items[index]


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


def _lerp(below: np.ndarray, above: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """numpy's linear-method interpolation, written the same way so the
    floating-point result is bit-identical to `np.percentile`."""
    diff = above - below
    return np.where(gamma >= 0.5, above - diff * (1 - gamma), below + diff * gamma)


def histogram_percentiles(values: np.ndarray, pcts: Sequence[float]) -> np.ndarray:
    """`np.percentile(values, pcts, method="linear")` for integer images.

    Counting values (np.bincount) and walking the cumulative sum finds the
    k-th smallest value without sorting; float or very wide integer ranges
    fall back to np.percentile itself.
    """
    flat = values.ravel()
    if not np.issubdtype(flat.dtype, np.integer):
        return np.percentile(flat, pcts, method="linear")
    if flat.dtype in (np.uint8, np.uint16):
        offset, counts = 0, np.bincount(flat)
    else:  # e.g. mode 'I' (int32): shift to start at 0 if the range is narrow
        offset = int(flat.min())
        if int(flat.max()) - offset >= _MAX_HISTOGRAM_BINS:
            return np.percentile(flat, pcts, method="linear")
        counts = np.bincount(flat.astype(np.int64) - offset)
    cumulative = np.cumsum(counts)
    rank = (flat.size - 1) * (np.asarray(pcts, dtype=np.float64) / 100)
    below_rank = np.floor(rank)
    above_rank = np.minimum(below_rank + 1, flat.size - 1)
    # k-th smallest value = first bin whose cumulative count exceeds k.
    below = np.searchsorted(cumulative, below_rank, side="right") + offset
    above = np.searchsorted(cumulative, above_rank, side="right") + offset
    return _lerp(below, above, rank - below_rank)


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
    low, high = histogram_percentiles(grey, [clip_low_pct, clip_high_pct])
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


def load_preprocessed(
    path: Path,
    clip_low_pct: float = DEFAULT_CLIP_LOW_PCT,
    clip_high_pct: float = DEFAULT_CLIP_HIGH_PCT,
) -> Image.Image:
    """Read an image file and pre-process it (raises OSError if unreadable)."""
    with Image.open(path) as image:
        image.load()
        return preprocess_image(image, clip_low_pct, clip_high_pct)
