"""Which images train, tune and test the localizer: image kinds and the patient split.

Three kinds of training image:
- KEYPOINTED: a nodule image with annotated centres (Gaussian heatmap target);
- WEAK: a nodule image without keypoints (only "somewhere there is a nodule");
- NEGATIVE: a `No Finding` image (all-zero target).
Keypoints are few (about a hundred images) and negatives many (tens of
thousands), so an epoch is every keypointed image plus a rotating slice of the
weak positives and of the negatives (`trainer.MixedEpochSampler`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

KEYPOINTED, WEAK, NEGATIVE = 0, 1, 2
KIND_NAMES = {KEYPOINTED: "keypointed", WEAK: "weak", NEGATIVE: "negative"}
SPLITS = ("train", "val", "test")


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
