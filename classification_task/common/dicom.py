"""DICOM radiographs (`.dcm`): pixels as a viewer would show them, and the header facts, with pydicom.

A DICOM file stores raw detector values plus the steps that turn them into
display values. They are applied in the standard's order, before the
per-image percentile stretch that every image gets:

1. the stored pixels (one frame, one sample per pixel: a greyscale radiograph);
2. the modality LUT: RescaleSlope and RescaleIntercept, or a Modality LUT Sequence;
3. the VOI LUT: WindowCenter and WindowWidth, or a VOI LUT Sequence, when the file has one;
4. MONOCHROME1 (low values shown bright) inverted, so that bright means dense
   as in MONOCHROME2 and in PNGs: untransformed pixels over their nominal range
   0 to 2**BitsStored - 1, LUT outputs over their own range.

Untransformed pixels keep their integer type; LUT outputs (float64) that are
whole numbers within 0-65535 become uint16. So a DICOM and the PNG of the same
pixels are stretched alike, to the bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DICOM_SUFFIXES = (".dcm",)


class DicomError(ValueError):
    """A `.dcm` file that holds no greyscale image pydicom can decode; the message says why."""


@dataclass(frozen=True)
class DicomHeader:
    """What the header says without decoding the pixels; `spacing_mm` None when it gives none."""

    width_px: int
    height_px: int
    spacing_mm: float | None


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def read_dicom_grey(path: str | Path) -> np.ndarray:
    """The display values of a greyscale DICOM image, (rows, columns); DicomError if it has none."""
    try:
        dataset = pydicom.dcmread(path)
        frames, samples = int(dataset.get("NumberOfFrames") or 1), int(dataset.get("SamplesPerPixel") or 1)
        if frames != 1 or samples != 1:
            raise DicomError(f"{path} holds {frames} frame(s) of {samples} sample(s) per pixel; "
                             "a radiograph is one greyscale frame")
        stored = dataset.pixel_array
        values = apply_voi_lut(apply_modality_lut(stored, dataset), dataset)
    except DicomError:
        raise
    except Exception as err:  # pydicom raises many types for a broken, pixel-less or compressed file
        raise DicomError(f"{path} is not a readable DICOM image ({_reason(err)})") from None
    if str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        values = _mirror(values, int(dataset.get("BitsStored") or 0))
    return _compact(values)


def _mirror(values: np.ndarray, bits_stored: int) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2: raw stored values over their nominal 0..2^bits-1 range (the
    standard's inversion), values a LUT has transformed over their own range; dtype kept."""
    top = (1 << bits_stored) - 1
    if values.dtype.kind == "u" and 0 < bits_stored <= 16 and values.max() <= top:
        return (top - values).astype(values.dtype)
    return values.max() - (values - values.min())


def _compact(values: np.ndarray) -> np.ndarray:
    """uint16 when the values are whole numbers in 0-65535 (the LUTs return float64 even then)."""
    if values.dtype.kind == "f" and values.size and np.isfinite(values).all():
        if values.min() >= 0 and values.max() <= 65535 and np.array_equal(values, np.rint(values)):
            return values.astype(np.uint16)
    return values


def pixel_spacing_mm(dataset) -> float | None:
    """mm per pixel: PixelSpacing, else ImagerPixelSpacing; None if absent, invalid or not square."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        try:
            row_mm, column_mm = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if not (math.isfinite(row_mm) and math.isfinite(column_mm) and row_mm > 0 and column_mm > 0):
            continue
        # One number per image cannot hold unequal row and column spacing: leave it to a spacing CSV.
        return column_mm if math.isclose(row_mm, column_mm, rel_tol=1e-3) else None
    return None


def read_dicom_header(path: str | Path) -> DicomHeader:
    """Width, height and pixel spacing from the header; DicomError if it is not a DICOM image."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        width_px, height_px = int(dataset.Columns), int(dataset.Rows)
    except Exception as err:  # as above
        raise DicomError(f"{path} is not a readable DICOM image ({_reason(err)})") from None
    return DicomHeader(width_px, height_px, pixel_spacing_mm(dataset))
