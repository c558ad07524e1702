"""DICOM test files written at run time with pydicom from the real fixture radiographs in tests/data.

Each PNG becomes a `.dcm` with the same pixels: the 8-bit NIH images as 8-bit
DICOMs (the second one MONOCHROME1, its pixels stored inverted), the 16-bit
NODE21 image as a 16-bit DICOM with 12 bits stored and its pixel spacing.
A test module takes them with `from ...dicom_files import dicom_dir` (a fixture).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

DATA_DIR = Path(__file__).parent / "data"
FIXTURE_SPACING_MM = {"node21_3_16bit.png": 0.269}
MONOCHROME1_FIXTURE = "00027426_000.png"
PNGS = sorted(p.name for p in DATA_DIR.glob("*.png"))


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                **tags) -> Path:
    """A single-frame greyscale DICOM file holding `stored` as its pixel data, plus `tags`."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.set_pixel_data(stored, photometric, bits_stored or stored.dtype.itemsize * 8)
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def png_as_dicom(png: Path, dcm: Path, monochrome1: bool = False, **tags) -> Path:
    """The PNG's grey pixels as a DICOM; MONOCHROME1 stores them inverted, as such files do."""
    pixels = np.asarray(Image.open(png))
    bits = 8 if pixels.dtype == np.uint8 else max(int(pixels.max()).bit_length(), 1)
    if monochrome1:
        return write_dicom(dcm, ((1 << bits) - 1 - pixels).astype(pixels.dtype), "MONOCHROME1", bits, **tags)
    return write_dicom(dcm, pixels, "MONOCHROME2", bits, **tags)


def fixture_dicoms(folder: Path, spacing: bool = True) -> dict[str, Path]:
    """Every fixture PNG as `folder/<stem>.dcm`: {png name: dcm path}."""
    written = {}
    for png in sorted(DATA_DIR.glob("*.png")):
        tags = {"PixelSpacing": [FIXTURE_SPACING_MM[png.name]] * 2} if spacing and png.name in FIXTURE_SPACING_MM else {}
        written[png.name] = png_as_dicom(png, folder / f"{png.stem}.dcm", png.name == MONOCHROME1_FIXTURE, **tags)
    return written


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory) -> Path:
    """A folder holding every fixture PNG as a DICOM (fixture_dicoms), shared by the tests of a module."""
    folder = tmp_path_factory.mktemp("dicoms")
    fixture_dicoms(folder)
    return folder
