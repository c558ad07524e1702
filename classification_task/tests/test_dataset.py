"""Loading the NoduLoCC layout and pre-processing radiographs."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from classification_task.common.percentiles import exact_percentiles
from classification_task.dataset import (
    DataError, ImageCache, Preprocessing, load_image, load_labels, patient_id,
    read_grey, read_labels_csv, safe_join, stretch_to_uint8,
)
from classification_task.demo.synthetic import generate_dataset

FIXTURES = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nodulocc") / "demo"
    generate_dataset(root, n_images=120, positive_rate=0.3, size_px=96, seed=1)
    return root


def test_load_labels_maps_labels_and_resolves_both_folders(demo_root):
    frame = load_labels(demo_root)
    raw = pd.read_csv(demo_root / "classification_labels.csv", keep_default_na=False)
    assert frame["label"].tolist() == (raw["label"] == "Nodule").astype(int).tolist()
    folders = {Path(p).parent.name for p in frame["path"]}
    assert folders == {"nih_filtered_images", "lidc_png_16_bit"}
    assert all(Path(p).is_file() for p in frame["path"])


def test_patient_ids():
    assert patient_id("00000001_002.png") == patient_id("00000001_000.png") == "nih:00000001"
    assert patient_id("LIDC-IDRI-0001_1.png", "LIDC-IDRI-0001") == "lidc:LIDC-IDRI-0001"
    assert patient_id("other.png") == "file:other.png"


def test_missing_csv_and_missing_images_are_explained(tmp_path, demo_root):
    with pytest.raises(DataError, match="classification_labels.csv"):
        load_labels(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(demo_root, copy)
    next((copy / "nih_filtered_images").glob("*.png")).unlink()
    with pytest.raises(DataError, match="missing"):
        load_labels(copy)


def test_names_escaping_the_image_folder_are_refused(tmp_path):
    (tmp_path / "nih_filtered_images").mkdir()
    for name in ("../secret.png", "/etc/passwd", "a/../../x.png"):
        with pytest.raises(DataError, match="outside"):
            safe_join(tmp_path / "nih_filtered_images", name)


@pytest.mark.parametrize("dtype,high", [(np.uint8, 256), (np.uint16, 65536), (np.uint16, 4096)])
def test_histogram_percentiles_equal_numpy(dtype, high):
    rng = np.random.default_rng(int(high))
    for _ in range(5):
        pixels = rng.integers(0, high, size=(rng.integers(1, 90), rng.integers(1, 90)), dtype=dtype)
        for pct in (0.0, 0.5, 37.3, 99.5, 100.0):
            assert exact_percentiles(pixels, (pct,))[0] == pytest.approx(np.percentile(pixels, pct), abs=1e-9)


def test_stretch_matches_a_sorted_reference_on_16_bit():
    rng = np.random.default_rng(0)
    pixels = rng.integers(20000, 23000, size=(300, 200), dtype=np.uint16)
    low, high = np.percentile(pixels, (0.5, 99.5))
    expected = np.rint((np.clip(pixels, low, high) - low) / (high - low) * 255).astype(np.uint8)
    assert np.array_equal(stretch_to_uint8(pixels, 0.5, 99.5), expected)
    assert stretch_to_uint8(np.full((4, 4), 7, np.uint16), 0.5, 99.5).max() == 0


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "P", "LA"])
def test_every_mode_becomes_8_bit_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 100 + 20000)
    else:
        image = Image.fromarray(grey).convert(mode)
    image.save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png")
    assert out.mode == "RGB" and out.size == (30, 40)
    array = np.asarray(out)
    assert array.dtype == np.uint8 and array.max() == 255 and array.min() == 0


def test_real_radiographs_load(tmp_path):
    for name in ("00000001_000.png", "node21_3_16bit.png"):
        raw = read_grey(FIXTURES / name)
        image = load_image(FIXTURES / name, Preprocessing(size_px=64))
        assert image.size == (64, 64) and image.mode == "RGB"
    assert raw.dtype == np.uint16 and raw.max() > 255


def test_cache_returns_the_same_image_and_keys_on_settings(tmp_path):
    source = FIXTURES / "node21_3_16bit.png"
    cache = ImageCache(tmp_path / "cache", Preprocessing(size_px=64))
    first, second = cache.load(source), cache.load(source)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert np.array_equal(np.asarray(first), np.asarray(load_image(source, Preprocessing(size_px=64))))
    ImageCache(tmp_path / "cache", Preprocessing(size_px=32)).load(source)
    assert len(list((tmp_path / "cache").glob("*.png"))) == 2


def test_symlinked_images_inside_the_folder_are_accepted(tmp_path):
    folder = tmp_path / "nih_filtered_images"
    folder.mkdir()
    (folder / "00000001_000.png").symlink_to(FIXTURES / "00000001_000.png")
    assert safe_join(folder, "00000001_000.png").is_file()


def test_wide_32_bit_images_fall_back_to_numpy(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 2**30, size=(20, 20)).astype(np.int32)
    low, high = np.percentile(pixels, (0.5, 99.5))
    expected = np.rint((np.clip(pixels, low, high) - low) / (high - low) * 255).astype(np.uint8)
    assert np.abs(stretch_to_uint8(pixels, 0.5, 99.5).astype(int) - expected).max() <= 1


def test_an_unreadable_training_image_gives_image_none_and_the_reason(tmp_path):
    from classification_task.dataset import RadiographDataset

    (tmp_path / "bad.png").write_bytes(b"not a png")
    dataset = RadiographDataset(pd.DataFrame({"path": [str(tmp_path / "bad.png")], "label": [0]}))
    item = dataset[0]
    assert item["image"] is None and item["file_name"] == str(tmp_path / "bad.png") and item["label"] == 0
    assert item["error"].startswith("UnidentifiedImageError: cannot identify image file")


def test_the_labels_csv_reads_without_images_and_refuses_repeated_names(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file_name,label,LIDC_ID\n a.png ,Nodule ,\nLIDC-IDRI-0001_1.png,No Finding,LIDC-IDRI-0001\n")
    assert read_labels_csv(path, "pass another file").to_dict("list") == {
        "file_name": ["a.png", "LIDC-IDRI-0001_1.png"], "label": [1, 0], "lidc_id": ["", "LIDC-IDRI-0001"]}
    path.write_text("file_name,label\na.png,Nodule\na.png,No Finding\n")
    with pytest.raises(DataError, match="more than once"):
        read_labels_csv(path, "pass another file")
