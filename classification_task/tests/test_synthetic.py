"""The synthetic generator writes the NoduLoCC layout, labels and bit depths it declares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from classification_task.demo.synthetic import (
    CLASS_CSV, LIDC_DIR, LOC_CSV, NIH_DIR, SyntheticConfig, generate, generate_dataset, main,
)

N_IMAGES, SIZE_PX, POSITIVE_RATE = 40, 128, 0.3
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "demo"
    summary = generate_dataset(out, n_images=N_IMAGES, size_px=SIZE_PX,
                               positive_rate=POSITIVE_RATE, seed=0)
    return out, summary


def _image_path(root: Path, file_name: str) -> Path:
    return root / (LIDC_DIR if file_name.startswith("LIDC-IDRI-") else NIH_DIR) / file_name


def _grey(path: Path) -> np.ndarray:
    pixels = np.asarray(Image.open(path)).astype(np.float64)
    return pixels[..., 0] if pixels.ndim == 3 else pixels


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_classification_csv_matches_files(synthetic_root):
    root, summary = synthetic_root
    labels = pd.read_csv(root / CLASS_CSV, dtype=str, keep_default_na=False)
    assert list(labels.columns) == ["file_name", "label", "LIDC_ID"]
    assert len(labels) == N_IMAGES == summary["n_images"]
    assert set(labels["label"]) == {"Nodule", "No Finding"}
    assert labels["file_name"].is_unique
    is_lidc = labels["file_name"].str.startswith("LIDC-IDRI-")
    # LIDC_ID only on LIDC rows, and it is the file name's patient prefix.
    assert (labels.loc[~is_lidc, "LIDC_ID"] == "").all()
    lidc = labels[is_lidc]
    assert (lidc["LIDC_ID"].str.fullmatch(r"LIDC-IDRI-\d{4}")).all()
    assert all(f.startswith(pid + "_") for f, pid in zip(lidc["file_name"], lidc["LIDC_ID"]))
    assert labels.loc[~is_lidc, "file_name"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    for name in labels["file_name"]:
        assert _image_path(root, name).is_file(), name
    on_disk = {p.name for p in (root / NIH_DIR).iterdir()} | {p.name for p in (root / LIDC_DIR).iterdir()}
    assert on_disk == set(labels["file_name"])


def test_positive_count_is_exact(synthetic_root):
    root, summary = synthetic_root
    labels = pd.read_csv(root / CLASS_CSV)
    assert (labels["label"] == "Nodule").sum() == round(N_IMAGES * POSITIVE_RATE) == summary["n_positive"]


@pytest.mark.parametrize("n_images, rate, lidc_fraction", [(7, 0.0, 0.3), (9, 1.0, 0.5), (11, 0.45, 0.9)])
def test_positive_count_exact_at_extremes(tmp_path, n_images, rate, lidc_fraction):
    summary = generate_dataset(tmp_path / "d", n_images=n_images, positive_rate=rate,
                               lidc_fraction=lidc_fraction, size_px=48)
    labels = pd.read_csv(tmp_path / "d" / CLASS_CSV)
    assert (labels["label"] == "Nodule").sum() == round(n_images * rate) == summary["n_positive"]


def test_keypoints_mark_bright_blobs_on_positives_only(synthetic_root):
    root, summary = synthetic_root
    labels = pd.read_csv(root / CLASS_CSV)
    points = pd.read_csv(root / LOC_CSV)
    assert list(points.columns) == ["file_name", "x", "y"]
    assert len(points) == summary["n_keypoints"]
    per_image = points.groupby("file_name").size()
    positives = set(labels.loc[labels["label"] == "Nodule", "file_name"])
    assert set(per_image.index) == positives
    assert per_image.between(1, 2).all()
    for name, group in points.groupby("file_name"):
        pixels = _grey(_image_path(root, name))
        height, width = pixels.shape
        for x, y in zip(group["x"], group["y"]):
            assert 0 <= x < width and 0 <= y < height, (name, x, y)
            assert pixels[int(round(y)), int(round(x))] > np.median(pixels), (name, x, y)


def test_bit_depths_and_odd_nih_files(synthetic_root):
    root, summary = synthetic_root
    modes, sizes = [], []
    for path in sorted((root / NIH_DIR).iterdir()):
        with Image.open(path) as image:
            modes.append(image.mode)
            sizes.append(image.size)
            assert np.asarray(image).dtype == np.uint8
    assert set(modes) <= {"L", "RGBA"} and "RGBA" in modes
    assert modes.count("RGBA") == summary["n_rgba"]
    assert (SIZE_PX, SIZE_PX) in sizes and any(w != h for w, h in sizes)
    lidc_paths = sorted((root / LIDC_DIR).iterdir())
    assert len(lidc_paths) == summary["n_lidc"] > 0
    for path in lidc_paths:
        with Image.open(path) as image:
            assert image.mode in {"I;16", "I"}
            assert image.size[0] > SIZE_PX  # LIDC images are larger than NIH ones
            pixels = np.asarray(image).astype(np.int64)
        # A narrow slice of the 16-bit range, well above 8-bit values.
        assert pixels.min() > 255 and pixels.max() - pixels.min() < 5000


def test_patients_have_several_images(synthetic_root):
    root, _ = synthetic_root
    names = pd.read_csv(root / CLASS_CSV)["file_name"]
    nih = names[~names.str.startswith("LIDC-IDRI-")]
    per_patient = nih.str.slice(0, 8).value_counts()
    assert per_patient.max() >= 2 and len(per_patient) < len(nih)
    # Follow-up numbers of a patient run 000, 001, ... without gaps.
    for patient, count in per_patient.items():
        follow_ups = sorted(nih[nih.str.startswith(patient)].str.slice(9, 12).astype(int))
        assert follow_ups == list(range(count))


def test_same_seed_same_bytes_other_seed_differs(synthetic_root, tmp_path):
    root, _ = synthetic_root
    again = tmp_path / "again"
    generate_dataset(again, n_images=N_IMAGES, size_px=SIZE_PX, positive_rate=POSITIVE_RATE, seed=0)
    assert _read_tree(again) == _read_tree(root)
    other = tmp_path / "other"
    generate_dataset(other, n_images=N_IMAGES, size_px=SIZE_PX, positive_rate=POSITIVE_RATE, seed=1)
    assert _read_tree(other) != _read_tree(root)


def test_cli_refuses_existing_folder_then_overwrites(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(["--out", str(out), "--n_images", "5", "--size_px", "48"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").exists()
    assert main(["--out", str(out), "--n_images", "5", "--size_px", "48", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / CLASS_CSV).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp folders left behind


def test_cli_rejects_bad_values_with_exit_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--positive_rate", "1.5"]) == 2
    assert "positive_rate" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    with pytest.raises(ValueError):
        SyntheticConfig(out_dir=str(tmp_path), size_px=8)


def test_runs_as_a_script_path(tmp_path):
    out = tmp_path / "script"
    command = [sys.executable, str(REPO_ROOT / "classification_task" / "demo" / "synthetic.py"),
               "--out", str(out), "--n_images", "4", "--size_px", "48"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "n_images=4" in result.stdout
    assert generate(SyntheticConfig(out_dir=str(out), n_images=4, size_px=48, overwrite=True))


def test_hard_mode_adds_look_alikes_and_keeps_only_some_keypoints(synthetic_root, tmp_path):
    easy_root, _ = synthetic_root
    hard_root = tmp_path / "hard"
    summary = generate_dataset(hard_root, n_images=N_IMAGES, size_px=SIZE_PX, positive_rate=POSITIVE_RATE,
                               seed=0, difficulty="hard", keypoint_fraction=0.5)
    labels = pd.read_csv(hard_root / CLASS_CSV)
    assert labels.equals(pd.read_csv(easy_root / CLASS_CSV))  # same images, same labels
    keypointed = set(pd.read_csv(hard_root / LOC_CSV)["file_name"])
    positives = set(labels.loc[labels["label"] == "Nodule", "file_name"])
    assert keypointed < positives and 0 < len(keypointed) < len(positives)
    assert summary["n_keypoints"] == len(pd.read_csv(hard_root / LOC_CSV))
    assert summary["n_keypoints"] > 0


def test_hard_mode_streaks_are_elongated_bright_look_alikes():
    from scipy import ndimage

    from classification_task.demo.synthetic import HARD_AMPLITUDE, _anatomy, _streaks

    size = 128
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for seed in (0, 1):  # seeds whose streaks do not cross (crossing ones merge into one blob)
        rng = np.random.default_rng(seed)
        streaks = _streaks(_anatomy(rng), size, size, 4.0, rng, xx, yy)
        assert streaks.min() >= 0 and streaks.max() >= 0.9 * HARD_AMPLITUDE[0]
        components, n = ndimage.label(streaks > 0.5 * streaks.max())
        ratios = []
        for label in range(1, n + 1):
            ys, xs = np.nonzero(components == label)
            if len(xs) >= 5:
                small, large = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])))
                ratios.append(large / max(small, 1e-6))
        assert min(ratios) > 4, seed  # each a line, not a round nodule


def test_easy_mode_is_unchanged_by_the_hard_options(synthetic_root, tmp_path):
    root, _ = synthetic_root
    again = tmp_path / "again"
    generate_dataset(again, n_images=N_IMAGES, size_px=SIZE_PX, positive_rate=POSITIVE_RATE, seed=0,
                     difficulty="easy", keypoint_fraction=1.0)
    assert _read_tree(again) == _read_tree(root)
