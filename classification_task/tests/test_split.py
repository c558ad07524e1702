"""The patient split: grouped by patient, stratified by class, seeded, saved and reused."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classification_task.dataset import DataError, load_labels, patient_id
from classification_task.split import load_or_make_split, split_by_patient, split_table
from classification_task.demo.synthetic import generate_dataset


REPO = Path(__file__).resolve().parents[2]
# The localizer's train.py deciding and writing its split.csv, run as a command (the two task folders
# never import each other).
LOCALIZER_SPLIT = (
    "import sys\n"
    "from localization_task import train\n"
    "config = train.TrainConfig(data_root=sys.argv[1], output_dir=sys.argv[2])\n"
    "train.write_split(config, train.load_splits(config))\n"
)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nodulocc") / "demo"
    generate_dataset(root, n_images=120, positive_rate=0.3, size_px=96, seed=1)
    return root


def _patients_frame(n_patients=1500, seed=0) -> pd.DataFrame:
    """Labels in the NIH naming scheme: 1-4 follow-ups per patient, ~5 % nodules."""
    rng = np.random.default_rng(seed)
    names = [f"{p:08d}_{f:03d}.png" for p in range(n_patients) for f in range(rng.integers(1, 5))]
    labels = (rng.random(len(names)) < 0.05).astype(int)
    return pd.DataFrame({"file_name": names, "label": labels, "patient_id": [patient_id(n) for n in names]})


def test_split_is_patient_grouped_stratified_and_seeded():
    frame = _patients_frame()
    split = split_by_patient(frame, seed=0)
    splits_per_patient = split.groupby(frame["patient_id"]).nunique()
    assert (splits_per_patient == 1).all(), "a patient crosses splits"
    fractions = split.value_counts(normalize=True)
    for name, target in (("train", 0.80), ("val", 0.05), ("test", 0.15)):
        assert fractions[name] == pytest.approx(target, abs=0.01)
        assert frame["label"][split == name].mean() == pytest.approx(frame["label"].mean(), abs=0.01)
    assert split.equals(split_by_patient(frame, seed=0))
    assert not split.equals(split_by_patient(frame, seed=1))


def test_split_of_the_synthetic_layout_has_no_leakage(demo_root):
    frame = load_labels(demo_root)
    split = split_by_patient(frame, seed=0)
    assert (split.groupby(frame["patient_id"]).nunique() == 1).all()
    assert set(split) == {"train", "val", "test"}


def test_split_file_round_trip(demo_root, tmp_path):
    frame = load_labels(demo_root)
    made = load_or_make_split(frame, None, seed=3)
    made[["file_name", "split"]].to_csv(tmp_path / "split.csv", index=False)
    reused = load_or_make_split(frame, tmp_path / "split.csv", seed=99)
    assert reused["split"].tolist() == made["split"].tolist()


def test_bad_split_files_are_refused(demo_root, tmp_path):
    frame = load_labels(demo_root)
    pd.DataFrame({"file_name": frame["file_name"], "split": "validation"}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataError, match="split"):
        load_or_make_split(frame, tmp_path / "s.csv", seed=0)


def test_a_split_file_written_by_the_localizer_is_read_and_written_back_unchanged(demo_root, tmp_path):
    """--split_file of the localizer's split.csv: the classifier takes its split, and both files hold the same
    columns, labels and patients."""
    done = subprocess.run([sys.executable, "-c", LOCALIZER_SPLIT, str(demo_root), str(tmp_path / "loc")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    localizer = pd.read_csv(tmp_path / "loc" / "split.csv", dtype=str, keep_default_na=False)
    ours = split_table(load_or_make_split(load_labels(demo_root), tmp_path / "loc" / "split.csv", seed=0))
    assert list(localizer.columns) == list(ours.columns) == ["file_name", "split", "label", "patient_id"]
    pd.testing.assert_frame_equal(ours.sort_values("file_name").reset_index(drop=True),
                                  localizer.sort_values("file_name").reset_index(drop=True))
