"""DICOM input: `.dcm` files written by pydicom from the real fixture radiographs read like their PNGs."""

import shutil

import numpy as np
import pandas as pd
import pydicom

from classification_task import inference
from classification_task.dataset import (
    Preprocessing, RadiographDataset, load_image, load_labels, read_grey, stretch_to_uint8,
)
from classification_task.tests.dicom_files import (  # noqa: F401  dicom_dir: a fixture
    DATA_DIR, MONOCHROME1_FIXTURE, PNGS, dicom_dir, write_dicom,
)


def test_fixture_dicoms_read_as_the_pixels_of_their_pngs(dicom_dir):
    """8-bit, 16-bit (12 bits stored) and MONOCHROME1 (stored inverted): the same grey values."""
    for png in PNGS:
        dcm = dicom_dir / png.replace(".png", ".dcm")
        expected = read_grey(DATA_DIR / png)
        got = read_grey(dcm)
        assert got.dtype == expected.dtype, png
        np.testing.assert_array_equal(got, expected, err_msg=png)
        np.testing.assert_array_equal(np.asarray(load_image(dcm, Preprocessing(size_px=64))),
                                      np.asarray(load_image(DATA_DIR / png, Preprocessing(size_px=64))))


def test_monochrome1_is_inverted_not_read_as_stored(dicom_dir):
    stored = 255 - read_grey(DATA_DIR / MONOCHROME1_FIXTURE)
    assert not np.array_equal(read_grey(dicom_dir / MONOCHROME1_FIXTURE.replace(".png", ".dcm")), stored)


def _dicom_window(x, centre, width):
    """The DICOM standard's linear VOI function (PS3.3 C.11.2.1.2.1), mapped to 0..1."""
    low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, (x - (centre - 0.5)) / (width - 1) + 0.5))


def test_rescale_then_window_come_before_the_percentile_stretch(tmp_path):
    pixels = read_grey(DATA_DIR / "node21_3_16bit.png")  # 0-4093
    rescaled = write_dicom(tmp_path / "rescaled.dcm", pixels, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000)
    np.testing.assert_array_equal(read_grey(rescaled), 2.0 * pixels - 1000)
    # The window is in rescaled units: 2 * 1500 - 1000 = 2000 is its centre, so it clips both ends.
    windowed = write_dicom(tmp_path / "windowed.dcm", pixels, bits_stored=12, RescaleSlope=2,
                           RescaleIntercept=-1000, WindowCenter=2000, WindowWidth=2400)
    expected = stretch_to_uint8(_dicom_window(2.0 * pixels - 1000, 2000, 2400), 0.5, 99.5)
    got = stretch_to_uint8(read_grey(windowed), 0.5, 99.5)
    difference = np.abs(got.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # equal up to float rounding
    plain = stretch_to_uint8(pixels, 0.5, 99.5)
    assert (got != plain).mean() > 0.2  # the window did change the picture


def test_a_dicom_folder_gives_the_csv_of_the_png_folder_and_lists_bad_dicoms(dicom_dir, tiny_model_dir, tmp_path):
    """file_name keeps .dcm; everything else is the PNG run's, to the last digit."""
    folder = tmp_path / "dicoms"
    shutil.copytree(dicom_dir, folder)
    no_pixels = write_dicom(folder / "no_pixels.dcm", np.zeros((8, 8), np.uint8))
    dataset = pydicom.dcmread(no_pixels)
    del dataset.PixelData
    dataset.save_as(no_pixels)
    (folder / "not_dicom.dcm").write_bytes(b"not a DICOM file at all" * 10)
    argv = ["--model_id", str(tiny_model_dir), "--num_workers", "0", "--batch_size", "2"]
    assert inference.main(["--input_dir", str(DATA_DIR), "--output_dir", str(tmp_path / "png"), *argv]) == 0
    assert inference.main(["--input_dir", str(folder), "--output_dir", str(tmp_path / "dcm"), *argv]) == 0
    from_png = pd.read_csv(tmp_path / "png" / inference.RESULTS_CSV, dtype=str)
    from_dcm = pd.read_csv(tmp_path / "dcm" / inference.RESULTS_CSV, dtype=str)
    assert list(from_dcm["file_name"]) == [p.replace(".png", ".dcm") for p in PNGS]
    pd.testing.assert_frame_equal(from_dcm.assign(file_name=from_dcm["file_name"].str.replace(".dcm", ".png")),
                                  from_png)
    unreadable = pd.read_csv(tmp_path / "dcm" / inference.UNREADABLE_CSV)
    assert sorted(unreadable["file_name"]) == ["no_pixels.dcm", "not_dicom.dcm"]
    assert unreadable["error"].str.contains("not a readable DICOM image").all()


def test_training_data_may_be_dicom(dicom_dir, tmp_path):
    """classification_labels.csv naming .dcm files: found in the image folders, decoded like the PNGs."""
    root = tmp_path / "root"
    shutil.copytree(dicom_dir, root / "nih_filtered_images")
    names = [p.replace(".png", ".dcm") for p in PNGS]
    pd.DataFrame({"file_name": names, "label": ["No Finding", "Nodule", "Nodule"]}).to_csv(
        root / "classification_labels.csv", index=False)
    frame = load_labels(root)
    png_frame = frame.assign(path=[str(DATA_DIR / p) for p in PNGS])
    prep = Preprocessing(size_px=48)
    for dcm_item, png_item in zip(RadiographDataset(frame, prep), RadiographDataset(png_frame, prep)):
        assert dcm_item["label"] == png_item["label"]
        np.testing.assert_array_equal(np.asarray(dcm_item["image"]), np.asarray(png_item["image"]))
