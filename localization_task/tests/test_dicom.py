"""DICOM input: `.dcm` files written by pydicom from the real fixture radiographs, and header spacing in mm."""

import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from localization_task import inference, metrics
from localization_task.dataset import image_size, load_preprocessed, read_grey, read_stretched
from localization_task.heatmap.model import HeatmapLocalizer
from localization_task.evaluation.predictions import RESULTS_CSV
from localization_task.tests.dicom_files import DATA_DIR, PNGS, dicom_dir, write_dicom  # noqa: F401  dicom_dir: a fixture


def _dcm(png: str) -> str:
    return png.replace(".png", ".dcm")


def test_fixture_dicoms_read_as_their_pngs_with_the_size_from_the_header(dicom_dir):
    """8-bit, 16-bit (12 bits stored) and MONOCHROME1 (stored inverted): the same pixels at every stage."""
    for png in PNGS:
        dcm = dicom_dir / _dcm(png)
        np.testing.assert_array_equal(read_grey(dcm), read_grey(DATA_DIR / png), err_msg=png)
        np.testing.assert_array_equal(read_stretched(str(dcm)), read_stretched(str(DATA_DIR / png)))
        np.testing.assert_array_equal(np.asarray(load_preprocessed(dcm, 1.0, 99.0)),
                                      np.asarray(load_preprocessed(DATA_DIR / png, 1.0, 99.0)))
        assert image_size(dcm) == image_size(DATA_DIR / png)


def _without_pixels(path):
    write_dicom(path, np.zeros((8, 8), np.uint8))
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)


@pytest.fixture(scope="module")
def untrained_checkpoint(tiny_encoder, tmp_path_factory):
    """A localizer as train.py saves it, with random weights: its peaks still depend on every pixel."""
    model = HeatmapLocalizer.from_encoder(tiny_encoder, encoder_mode="full", input_size_px=64, head_channels=16,
                                          stem_channels=8)
    folder = tmp_path_factory.mktemp("checkpoint") / "best_model"
    model.save_pretrained(folder)
    return folder


def test_a_dicom_folder_gives_the_csv_of_the_png_folder_and_skips_bad_dicoms(dicom_dir, untrained_checkpoint,
                                                                             tmp_path, capsys):
    """file_name keeps .dcm; the keypoints and confidences are the PNG run's, to the last digit."""
    folder = tmp_path / "dicoms"
    shutil.copytree(dicom_dir, folder)
    _without_pixels(folder / "no_pixels.dcm")
    (folder / "not_dicom.dcm").write_bytes(b"not a DICOM file at all" * 10)
    argv = ["--backend", "heatmap", "--checkpoint", str(untrained_checkpoint), "--min_confidence", "0",
            "--num_workers", "0", "--batch_size", "2"]
    assert inference.main(["--input_dir", str(DATA_DIR), "--output_dir", str(tmp_path / "png"), *argv]) == 0
    capsys.readouterr()
    assert inference.main(["--input_dir", str(folder), "--output_dir", str(tmp_path / "dcm"), *argv]) == 0
    printed = capsys.readouterr()
    assert "2 skipped as unreadable" in printed.out
    assert "no_pixels.dcm" in printed.err and "not_dicom.dcm" in printed.err
    from_png = pd.read_csv(tmp_path / "png" / RESULTS_CSV, dtype=str)
    from_dcm = pd.read_csv(tmp_path / "dcm" / RESULTS_CSV, dtype=str)
    assert len(from_png) > 0 and set(from_dcm["file_name"]) == {_dcm(p) for p in PNGS}
    pd.testing.assert_frame_equal(from_dcm.assign(file_name=from_dcm["file_name"].str.replace(".dcm", ".png")),
                                  from_png)


# --------------------------------------------------------------------- mm from the DICOM header

GT = "file_name,x,y\n{a},100,100\n{a},200,200\n{b},300,300\n{c},50,60\n"
PRED = "file_name,x,y,confidence\n{a},106,108,0.9\n{a},200,220,0.8\n{b},310,305,0.7\n{c},55,62,0.6\n"
SPACING = {"a": ("PixelSpacing", 0.2), "b": ("ImagerPixelSpacing", 0.5), "c": (None, None)}
SIZES = {"a": (300, 400), "b": (600, 800), "c": (200, 200)}


def _evaluation(folder, suffix, *extra):
    names = {key: f"{key}{suffix}" for key in SIZES}
    (folder / "gt.csv").write_text(GT.format(**names))
    (folder / "pred.csv").write_text(PRED.format(**names))
    argv = ["--predictions", str(folder / "pred.csv"), "--ground_truth", str(folder / "gt.csv"),
            "--image_roots", str(folder / "images"), "--output_dir", str(folder / "out"), *extra]
    assert metrics.main(argv) == 0
    summary = json.loads((folder / "out" / "eval_summary.json").read_text())
    return summary, pd.read_csv(folder / "out" / "per_image_metrics.csv")


def _dicom_case(folder):
    for key, (width, height) in SIZES.items():
        keyword, spacing = SPACING[key]
        tags = {keyword: [spacing, spacing]} if keyword else {}
        write_dicom(folder / "images" / f"{key}.dcm", np.full((height, width), 900, np.uint16), bits_stored=12,
                    **tags)
    return folder


def _png_case(folder, spacing_mm: dict):
    (folder / "images").mkdir(parents=True)
    for key, size in SIZES.items():
        Image.new("L", size, 128).save(folder / "images" / f"{key}.png")
    rows = "".join(f"{key}.png,{mm}\n" for key, mm in spacing_mm.items())
    (folder / "spacing.csv").write_text("file_name,spacing_mm\n" + rows)
    return folder


def _without_names(summary):
    return {k: v for k, v in summary.items() if k not in ("config", "git_commit", "versions")}


def test_mm_distances_from_dicom_spacing_equal_those_from_a_spacing_csv(tmp_path):
    """PixelSpacing, else ImagerPixelSpacing; sizes from Rows/Columns; no spacing: left out of the mm figures."""
    from_dicom, per_image_dicom = _evaluation(_dicom_case(tmp_path / "dicom"), ".dcm")
    png = _png_case(tmp_path / "png", {"a": 0.2, "b": 0.5})
    from_csv, per_image_csv = _evaluation(png, ".png", "--pixel_spacing_csv", str(png / "spacing.csv"))
    assert from_dicom["n_images_with_spacing"] == 2
    assert np.isfinite(from_dicom["tolerant"]["mre_mm"]) and from_dicom["tolerant"]["n_matched_mm"] == 3
    assert _without_names(from_dicom) == _without_names(from_csv)
    pd.testing.assert_frame_equal(per_image_dicom.drop(columns="file_name"), per_image_csv.drop(columns="file_name"))


def test_a_spacing_csv_wins_over_the_dicom_header_for_the_images_it_lists(tmp_path):
    folder = _dicom_case(tmp_path / "dicom")
    (folder / "spacing.csv").write_text("file_name,spacing_mm\na.dcm,0.3\n")
    from_both, _ = _evaluation(folder, ".dcm", "--pixel_spacing_csv", str(folder / "spacing.csv"))
    png = _png_case(tmp_path / "png", {"a": 0.3, "b": 0.5})
    from_csv, _ = _evaluation(png, ".png", "--pixel_spacing_csv", str(png / "spacing.csv"))
    assert _without_names(from_both)["tolerant"] == _without_names(from_csv)["tolerant"]
    header_only, _ = _evaluation(_dicom_case(tmp_path / "header"), ".dcm")
    assert header_only["tolerant"]["mre_mm"] != from_both["tolerant"]["mre_mm"]
