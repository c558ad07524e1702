"""Labels, image discovery, safe paths and the percentile pre-processing."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from localization_task.dataset import (
    DataError, discover_images, image_size, load_localization_data, percentile_clip_to_uint8,
    preprocess_image, safe_join, to_grey_array,
)
from localization_task.common.percentiles import exact_percentiles

DATA = Path(__file__).parent / "data"
NIH_8BIT = DATA / "00000001_000.png"
NODE21_16BIT = DATA / "node21_3_16bit.png"


# --- percentiles: fast histogram vs obvious numpy reference -------------------


@pytest.mark.parametrize("dtype, high", [(np.uint8, 256), (np.uint16, 65536), (np.uint16, 4094)])
def test_histogram_percentiles_equal_numpy_linear_exactly(dtype, high):
    rng = np.random.default_rng(0)
    for _ in range(50):
        values = rng.integers(0, rng.integers(1, high + 1), size=rng.integers(1, 3000)).astype(dtype)
        pcts = [0.5, 99.5, 0.0, 100.0, 50.0, rng.uniform(0, 100)]
        expected = np.percentile(values, pcts, method="linear")
        np.testing.assert_array_equal(exact_percentiles(values, pcts), expected)


def test_histogram_percentiles_on_signed_and_float_images():
    rng = np.random.default_rng(1)
    signed = rng.integers(-3000, 3000, size=(64, 80)).astype(np.int32)  # mode 'I'
    floats = rng.normal(size=(64, 80)).astype(np.float32)  # mode 'F'
    wide = rng.integers(-2**40, 2**40, size=(64, 80))  # too wide for a histogram: np.percentile itself
    narrow_u32 = rng.integers(70000, 70500, size=(64, 80)).astype(np.uint32)  # a histogram from 70000 on
    for values in (signed, floats, wide, narrow_u32):
        np.testing.assert_array_equal(
            exact_percentiles(values, [0.5, 99.5]), np.percentile(values, [0.5, 99.5], method="linear")
        )


def _slow_reference(grey, low_pct=0.5, high_pct=99.5):
    low, high = np.percentile(grey, [low_pct, high_pct], method="linear")
    scaled = (np.clip(grey.astype(np.float64), low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


@pytest.mark.parametrize("dtype, high", [(np.uint8, 256), (np.uint16, 65536), (np.uint16, 4094)])
def test_percentile_clip_matches_the_slow_reference(dtype, high):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, high, size=(300, 257)).astype(dtype)
    result = percentile_clip_to_uint8(grey)
    np.testing.assert_array_equal(result, _slow_reference(grey))
    assert result.dtype == np.uint8 and result.min() == 0 and result.max() == 255


def test_percentile_clip_on_a_real_16_bit_radiograph():
    grey = to_grey_array(Image.open(NODE21_16BIT))
    assert grey.dtype == np.uint16 and grey.max() > 255
    np.testing.assert_array_equal(percentile_clip_to_uint8(grey, 1.0, 99.0), _slow_reference(grey, 1.0, 99.0))


def test_flat_image_becomes_black_not_nan():
    assert not percentile_clip_to_uint8(np.full((8, 8), 700, np.uint16)).any()


# --- image modes ---------------------------------------------------------------


def _grey_u8(seed=3, shape=(40, 56)):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


def _check_rgb(image, size):
    assert image.mode == "RGB" and image.size == size
    rgb = np.asarray(image)
    assert rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0]


def test_grey_rgb_rgba_and_palette_give_the_same_result():
    grey = _grey_u8()
    size = (grey.shape[1], grey.shape[0])
    expected = _check_rgb(preprocess_image(Image.fromarray(grey)), size)
    np.testing.assert_array_equal(expected, _slow_reference(grey))
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1))
    rgba = Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]))
    palette = Image.fromarray(255 - grey)  # indices into a reversed grey palette
    palette.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    assert (rgb.mode, rgba.mode, palette.mode) == ("RGB", "RGBA", "P")
    for image in (rgb, rgba, palette, Image.fromarray(grey).convert("LA")):
        np.testing.assert_array_equal(_check_rgb(preprocess_image(image), size), expected)


def test_16_bit_modes_match_the_8_bit_image_they_were_scaled_from():
    grey = _grey_u8(seed=4)
    expected = preprocess_image(Image.fromarray(grey))
    grey16 = grey.astype(np.uint16) * 257
    image16 = Image.fromarray(grey16)
    image_i = Image.fromarray(grey16.astype(np.int32))
    assert (image16.mode, image_i.mode) == ("I;16", "I")
    for image in (image16, image_i):
        diff = np.asarray(preprocess_image(image), dtype=int) - np.asarray(expected, dtype=int)
        assert np.abs(diff).max() <= 1  # same up to float rounding of the rescale


def test_real_fixtures_preprocess_to_full_range_rgb():
    for path, size in ((NIH_8BIT, (512, 512)), (NODE21_16BIT, (1024, 1024))):
        grey = _check_rgb(preprocess_image(Image.open(path)), size)
        assert grey.min() == 0 and grey.max() == 255


def test_image_size_reads_the_header_without_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert image_size(NODE21_16BIT) == (1024, 1024)
    assert image_size(NIH_8BIT) == (512, 512)


# --- file names and discovery ----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../x.png", "a/../../x.png", "..", "C:\\x.png", "..\\x.png", "\\\\host\\x.png", ""]
)
def test_path_escaping_names_are_rejected(tmp_path, name):
    with pytest.raises(DataError, match="escape"):
        safe_join(tmp_path, name)


def test_plain_relative_names_are_joined(tmp_path):
    assert safe_join(tmp_path, "sub/x.png") == tmp_path / "sub" / "x.png"


def test_discover_images_sorted_and_optionally_recursive(tmp_path):
    for name in ("b.png", "a.JPG", "c.jpeg", "notes.txt", "sub/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    flat = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path)]
    deep = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path, recursive=True)]
    assert flat == ["a.JPG", "b.png", "c.jpeg"]
    assert deep == ["a.JPG", "b.png", "c.jpeg", "sub/d.png"]


# --- the labelled NoduLoCC localization set -----------------------------------

CLASSIFICATION_CSV = (
    "file_name,label,LIDC_ID\n"
    "00000001_000.png,No Finding,\n"
    "lidc_0001.png,Nodule,LIDC-IDRI-0001\n"
    "00000001_001.png,Nodule,\n"
    "other.png,No Finding,\n"
)
LOCALIZATION_CSV = "file_name,x,y\nlidc_0001.png,100,200\n00000001_001.png,10.5,20\nlidc_0001.png,300,400\n"


def _data_root(tmp_path, localization_csv=LOCALIZATION_CSV, classification_csv=CLASSIFICATION_CSV):
    (tmp_path / "nih_filtered_images").mkdir()
    (tmp_path / "lidc_png_16_bit").mkdir()
    for name in ("00000001_000.png", "00000001_001.png"):
        shutil.copy(NIH_8BIT, tmp_path / "nih_filtered_images" / name)
    for name in ("lidc_0001.png", "lidc_0002.png", "other.png"):
        shutil.copy(NODE21_16BIT, tmp_path / "lidc_png_16_bit" / name)
    (tmp_path / "classification_labels.csv").write_text(classification_csv)
    (tmp_path / "localization_labels.csv").write_text(localization_csv)
    return tmp_path


def test_loader_joins_labels_paths_and_points_per_image(tmp_path):
    data = load_localization_data(_data_root(tmp_path))
    assert list(data.columns) == ["file_name", "path", "label", "lidc_id", "patient_id", "points_px"]
    assert data["file_name"].tolist() == ["00000001_000.png", "lidc_0001.png", "00000001_001.png", "other.png"]
    assert data["label"].tolist() == [0, 1, 1, 0]
    assert [Path(p).parent.name for p in data["path"]] == [
        "nih_filtered_images", "lidc_png_16_bit", "nih_filtered_images", "lidc_png_16_bit"]
    assert all(Path(p).is_file() for p in data["path"])
    points = dict(zip(data["file_name"], data["points_px"]))
    np.testing.assert_array_equal(points["lidc_0001.png"], [[100.0, 200.0], [300.0, 400.0]])
    np.testing.assert_array_equal(points["00000001_001.png"], [[10.5, 20.0]])
    for name in ("00000001_000.png", "other.png"):
        assert points[name].shape == (0, 2) and points[name].dtype == np.float64


def test_loader_patient_ids_group_nih_follow_ups_and_lidc_cases(tmp_path):
    data = load_localization_data(_data_root(tmp_path))
    assert data["lidc_id"].tolist() == ["", "LIDC-IDRI-0001", "", ""]
    assert data["patient_id"].tolist() == ["nih:00000001", "lidc:LIDC-IDRI-0001", "nih:00000001", "file:other.png"]


def test_keypoints_make_a_nodule_also_outside_the_classification_csv(tmp_path):
    localization_csv = LOCALIZATION_CSV + "lidc_0002.png,5,6\nother.png,7,8\n"
    data = load_localization_data(_data_root(tmp_path, localization_csv)).set_index("file_name")
    assert data.index[-1] == "lidc_0002.png" and len(data) == 5
    assert data.loc["lidc_0002.png", "label"] == 1 and data.loc["lidc_0002.png", "patient_id"] == "file:lidc_0002.png"
    assert data.loc["other.png", "label"] == 1  # listed as No Finding, but it has a keypoint
    np.testing.assert_array_equal(data.loc["lidc_0002.png", "points_px"], [[5.0, 6.0]])


def test_loader_opens_no_image(tmp_path, monkeypatch):
    root = _data_root(tmp_path)

    def no_opening(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", no_opening)
    assert len(load_localization_data(root)) == 4


@pytest.mark.parametrize(
    "localization_csv, classification_csv, match",
    [
        ("file_name,x,y\n../../secret.png,1,2\n", CLASSIFICATION_CSV, "escape"),
        (LOCALIZATION_CSV, CLASSIFICATION_CSV + "/abs/path.png,Nodule,\n", "escape"),
        ("file_name,x\nlidc_0001.png,1\n", CLASSIFICATION_CSV, "column"),
        ("file_name,x,y\nlidc_0001.png,one,2\n", CLASSIFICATION_CSV, "non-numeric"),
        (LOCALIZATION_CSV, "file_name,LIDC_ID\nother.png,\n", "column"),
        (LOCALIZATION_CSV, CLASSIFICATION_CSV + "x.png,Maybe,\n", "'Maybe'"),
    ],
)
def test_loader_rejects_bad_csvs_with_a_plain_message(tmp_path, localization_csv, classification_csv, match):
    with pytest.raises(DataError, match=match):
        load_localization_data(_data_root(tmp_path, localization_csv, classification_csv))


@pytest.mark.parametrize("csv_name", ["classification_labels.csv", "localization_labels.csv"])
def test_a_missing_image_names_its_csv_and_the_fix(tmp_path, csv_name):
    root = _data_root(tmp_path)
    with (root / csv_name).open("a") as csv_file:
        csv_file.write("missing.png,Nodule,\n" if csv_name.startswith("class") else "missing.png,1,2\n")
    with pytest.raises(DataError) as error:
        load_localization_data(root)
    message = str(error.value)
    assert "'missing.png'" in message and str(root / csv_name) in message
    assert "copy the images there" in message and message.endswith(".") and "\n" not in message


@pytest.mark.parametrize("csv_name", ["classification_labels.csv", "localization_labels.csv"])
def test_loader_names_a_missing_labels_file(tmp_path, csv_name):
    root = _data_root(tmp_path)
    (root / csv_name).unlink()
    with pytest.raises(DataError, match=f"{csv_name} not found: put the NoduLoCC data under"):
        load_localization_data(root)
