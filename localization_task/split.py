"""Which images train, tune and test the localizer: image kinds and the patient split.

Three kinds of training image:
- KEYPOINTED: a nodule image with annotated centres (Gaussian heatmap target);
- WEAK: a nodule image without keypoints (only "somewhere there is a nodule");
- NEGATIVE: a `No Finding` image (all-zero target).
Keypoints are few (about a hundred images) and negatives many (tens of
thousands), so an epoch is every keypointed image plus a rotating slice of the
weak positives and of the negatives (`trainer.MixedEpochSampler`).
A run saves its split as `split.csv` in the schema of common/split_file.py,
which the classifier writes and reads too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from localization_task.common.errors import DataError
from localization_task.common.split_file import read_split_csv

KEYPOINTED, WEAK, NEGATIVE = 0, 1, 2
KIND_NAMES = {KEYPOINTED: "keypointed", WEAK: "weak", NEGATIVE: "negative"}


def image_kinds(labels: Sequence[int], n_points: Sequence[int]) -> np.ndarray:
    """KEYPOINTED / WEAK / NEGATIVE per image from its label (1 = Nodule) and keypoint count."""
    labels, n_points = np.asarray(labels), np.asarray(n_points)
    return np.where(n_points > 0, KEYPOINTED, np.where(labels == 1, WEAK, NEGATIVE))


def split_by_patient(patient_ids: Sequence[str], kinds: Sequence[int],
                     fractions: tuple[float, float, float] = (0.70, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """train / val / test per image: no patient in two splits, each kind split in `fractions`.

    A patient belongs to the stratum of its most informative image (keypointed,
    then weak, then negative). Within a stratum the patients are shuffled with
    `seed` and laid end to end; a patient goes to test, val or train by where
    its first image falls in that line. Linear time: 63,000 images take well
    under a second.
    """
    frame = pd.DataFrame({"patient": list(patient_ids), "kind": np.asarray(kinds)})
    patients = frame.groupby("patient", sort=True)["kind"].agg(["min", "size"])
    rng = np.random.default_rng(seed)
    patients = patients.iloc[rng.permutation(len(patients))]
    start = patients.groupby("min")["size"].cumsum() - patients["size"]
    position = start / patients.groupby("min")["size"].transform("sum")
    test_end, val_end = fractions[2], fractions[2] + fractions[1]
    split = np.where(position < test_end, "test", np.where(position < val_end, "val", "train"))
    by_patient = pd.Series(split, index=patients.index)
    return by_patient.loc[frame["patient"]].to_numpy()


def read_split_file(path: str | Path, file_names: Sequence[str]) -> np.ndarray:
    """The saved split of each of `file_names`, from a split.csv of either task (common/split_file.py).

    Rows of images no longer labelled are dropped; a labelled image the file
    does not list is refused, since placing it could only be a new, second
    decision.
    """
    saved = read_split_csv(path)
    split = pd.Series(list(file_names), dtype=object).map(dict(zip(saved["file_name"], saved["split"])))
    if split.isna().any():
        first = file_names[int(np.flatnonzero(split.isna().to_numpy())[0])]
        raise DataError(f"{path} has no split for {int(split.isna().sum())} labelled image(s), e.g. {first!r}: "
                        "remove their rows from the label CSVs, or start a new run without that split file.")
    return split.to_numpy()


def widen_validation(split: np.ndarray, patient_ids: Sequence[str], kinds: Sequence[int],
                     val_keypointed_frac: float, seed: int = 0) -> np.ndarray:
    """Move whole training patients into val until val holds `val_keypointed_frac` of the keypointed images.

    A split made for the classifier (80/5/15) leaves few keypointed images to
    tune the peak thresholds on. Only training patients with a keypointed
    image move, in a seeded order; test never changes, so no image of the
    other task's test split can enter training here.
    """
    split, patients, kinds = np.array(split, dtype=object), np.asarray(patient_ids), np.asarray(kinds)
    keypointed = kinds == KEYPOINTED
    wanted = int(np.ceil(val_keypointed_frac * keypointed.sum()))
    missing = wanted - int((keypointed & (split == "val")).sum())
    candidates = np.unique(patients[keypointed & (split == "train")])
    for patient in np.random.default_rng(seed).permutation(candidates):
        if missing <= 0:
            break
        members = (patients == patient) & (split == "train")
        split[members] = "val"
        missing -= int((members & keypointed).sum())
    return split
