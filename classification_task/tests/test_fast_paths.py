"""Fast paths equal their obvious versions: the patient split and label loading at the scale of the
real data (63k rows, 25k patients), and the clip percentiles without sorting."""

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classification_task import dataset

from classification_task.common import percentiles
from classification_task.common.percentiles import exact_percentiles
from classification_task.dataset import (
    clip_bounds, find_image_paths, patient_id, resolve_image_path,
)
from classification_task.split import split_by_patient

FIXTURES = Path(__file__).parent / "data"


def _full_scale_frame(seed=0) -> pd.DataFrame:
    """~63k rows in the NIH naming scheme: 25,531 patients with 1-65 images, 4.5 % nodules."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.geometric(0.4, size=25531), 65)
    patients = np.repeat(np.arange(len(sizes)), sizes)
    follow_ups = np.arange(len(patients)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(patients, follow_ups)]
    labels = (rng.random(len(names)) < 0.045).astype(int)
    return pd.DataFrame({"file_name": names, "label": labels, "patient_id": [patient_id(n) for n in names]})


def test_full_scale_split_is_fast_grouped_stratified_and_seeded():
    frame = _full_scale_frame()
    assert 60000 < len(frame) < 66000
    start = time.perf_counter()
    split = split_by_patient(frame, seed=42)
    assert time.perf_counter() - start < 10, "the split of 63k rows should take well under a second"
    assert (split.groupby(frame["patient_id"]).nunique() == 1).all(), "a patient crosses splits"
    for name, target in (("train", 0.80), ("val", 0.05), ("test", 0.15)):
        part = frame["label"][split == name]
        assert len(part) / len(frame) == pytest.approx(target, abs=0.005)
        assert part.mean() == pytest.approx(frame["label"].mean(), abs=0.005)
    assert split.equals(split_by_patient(frame, seed=42))
    assert not split.equals(split_by_patient(frame, seed=43))


def test_split_does_not_depend_on_the_row_order():
    frame = _full_scale_frame().iloc[:5000]
    shuffled = frame.sample(frac=1, random_state=0)
    assert split_by_patient(shuffled, seed=1).sort_index().equals(split_by_patient(frame, seed=1))


def test_every_image_of_a_nodule_patient_goes_with_it():
    frame = pd.DataFrame({"file_name": [f"{p:08d}_{f:03d}.png" for p in range(400) for f in range(3)]})
    frame["patient_id"] = [patient_id(n) for n in frame["file_name"]]
    frame["label"] = [int(f == 2 and p % 5 == 0) for p in range(400) for f in range(3)]
    split = split_by_patient(frame, seed=0)
    assert (split.groupby(frame["patient_id"]).nunique() == 1).all()
    for name, target in (("train", 0.80), ("val", 0.05), ("test", 0.15)):
        assert frame["label"][split == name].sum() == pytest.approx(80 * target, abs=1)


def test_the_listing_finds_what_the_per_name_lookup_finds(tmp_path):
    nih, lidc = tmp_path / "nih_filtered_images", tmp_path / "lidc_png_16_bit"
    (nih / "sub").mkdir(parents=True)
    lidc.mkdir()
    for path in (nih / "a.png", nih / "both.png", lidc / "both.png", lidc / "b.png", nih / "sub" / "c.png"):
        path.touch()
    (nih / "link.png").symlink_to(FIXTURES / "00000001_000.png")
    (nih / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (nih / "folder.png").mkdir()
    names = ["a.png", "both.png", "b.png", "sub/c.png", "link.png", "broken.png", "folder.png", "missing.png", "."]
    expected = [resolve_image_path(tmp_path, name) for name in names]
    assert find_image_paths(tmp_path, names) == [None if p is None else str(p) for p in expected]
    assert find_image_paths(tmp_path, ["both.png"]) == [os.path.join(nih, "both.png")]
    assert find_image_paths(tmp_path / "absent", ["a.png"]) == [None]


def test_patient_ids_of_names_in_sub_folders():
    assert patient_id("batch_1/00000001_002.png") == "nih:00000001"
    assert patient_id("sub/LIDC-IDRI-0001_1.png", "LIDC-IDRI-0001") == "lidc:LIDC-IDRI-0001"
    assert patient_id("sub/x.png") == "file:sub/x.png"


def _images(rng):
    """Integer images of every awkward kind: uniform, few values, constant, striped, 1-pixel, 1-D."""
    for trial in range(240):
        dtype = (np.uint8, np.uint16, np.int32)[trial % 3]
        high = 256 if dtype is np.uint8 else 65536
        shape = tuple(rng.integers(1, 200, 2))
        kind = trial % 6
        if kind == 0:
            pixels = rng.integers(0, high, shape)
        elif kind == 1:
            pixels = rng.integers(0, 3, shape) * rng.integers(1, high // 3)
        elif kind == 2:
            pixels = np.full(shape, rng.integers(0, high))
        elif kind == 3:  # black columns and white rows: most samples and bounds land on ties
            pixels = rng.integers(100, 120, shape)
            pixels[:, ::2], pixels[::3] = 0, high - 1
        elif kind == 4:
            pixels = (rng.normal(0.5, 0.1, shape) * high).clip(0, high - 1)
        else:
            pixels = rng.integers(0, high, rng.integers(1, 5000))
        yield pixels.astype(dtype)


def test_percentiles_equal_numpy_exactly():
    rng = np.random.default_rng(0)
    for pixels in _images(rng):
        percentiles = (0.0, 0.5, 1.0, 4.9, 5.0, 37.3, 50.0, 95.0, 99.5, 100.0, rng.uniform(0, 100))
        expected = [float(v) for v in np.percentile(pixels, percentiles)]
        assert exact_percentiles(pixels, percentiles) == expected, (pixels.dtype, pixels.shape)


def test_clip_percentiles_of_radiographs_come_from_the_tails(monkeypatch):
    """On real radiographs the sampled bound suffices: no fallback to the histogram."""
    def no_histogram(*args):
        raise AssertionError("fell back to the histogram")

    monkeypatch.setattr(percentiles, "_histogram_order_statistics", no_histogram)
    for name in ("00000001_000.png", "node21_3_16bit.png"):
        pixels = dataset.read_grey(FIXTURES / name)
        assert list(clip_bounds(pixels, 0.5, 99.5)) == [float(v) for v in np.percentile(pixels, (0.5, 99.5))]


def test_patients_of_every_size_go_everywhere_and_small_strata_fill_every_split():
    frame = _full_scale_frame(seed=3)
    split = split_by_patient(frame, seed=0)
    images_per_patient = frame.groupby(split)["patient_id"].agg(lambda ids: len(ids) / ids.nunique())
    assert images_per_patient.max() / images_per_patient.min() < 1.1, images_per_patient.to_dict()

    rng = np.random.default_rng(0)
    for seed in range(20):  # 25 patients per stratum, 1-5 images each
        names = [f"{p:08d}_{f:03d}.png" for p in range(50) for f in range(rng.integers(1, 6))]
        small = pd.DataFrame({"file_name": names, "patient_id": [patient_id(n) for n in names]})
        small["label"] = (small["patient_id"].str[-8:].astype(int) % 2) * (small["file_name"].str[-5] == "0")
        assert set(split_by_patient(small, seed=seed)) == {"train", "val", "test"}
