"""The localizer's image kinds and patient split: no leaks, right proportions, determinism."""

import time

import numpy as np
import pytest

from localization_task.split import KEYPOINTED, NEGATIVE, WEAK, image_kinds, split_by_patient


def _cohort(n_patients=400, seed=0):
    """Patients with 1-6 images; some have keypointed or weak nodule images."""
    rng = np.random.default_rng(seed)
    patients, kinds = [], []
    for p in range(n_patients):
        n = int(rng.integers(1, 7))
        patients += [f"p{p}"] * n
        kinds += list(rng.choice([KEYPOINTED, WEAK, NEGATIVE], size=n, p=[0.05, 0.15, 0.8]))
    return np.array(patients), np.array(kinds)


def test_image_kinds():
    kinds = image_kinds(labels=[1, 1, 0, 1], n_points=[2, 0, 0, 1])
    assert kinds.tolist() == [KEYPOINTED, WEAK, NEGATIVE, KEYPOINTED]


def test_split_keeps_patients_whole_and_each_kind_near_its_fractions():
    patients, kinds = _cohort()
    split = split_by_patient(patients, kinds, (0.7, 0.15, 0.15), seed=3)
    for patient in np.unique(patients):
        assert len(set(split[patients == patient])) == 1
    # Strata are by the patient's most informative image: check the keypointed-patient share.
    first = {p: i for i, p in reversed(list(enumerate(patients)))}
    stratum = {p: kinds[patients == p].min() for p in first}
    for kind in (KEYPOINTED, NEGATIVE):
        in_stratum = np.array([stratum[p] == kind for p in patients])
        shares = {name: np.mean(split[in_stratum] == name) for name in ("train", "val", "test")}
        assert shares["train"] == pytest.approx(0.7, abs=0.1)
        assert shares["test"] == pytest.approx(0.15, abs=0.08)
        assert shares["val"] == pytest.approx(0.15, abs=0.08)


def test_split_is_seeded():
    patients, kinds = _cohort()
    first = split_by_patient(patients, kinds, seed=1)
    assert (first == split_by_patient(patients, kinds, seed=1)).all()
    assert (first != split_by_patient(patients, kinds, seed=2)).any()


def test_split_at_full_scale_takes_under_a_few_seconds():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 25_531, size=63_179).astype(str)
    kinds = rng.choice([KEYPOINTED, WEAK, NEGATIVE], size=63_179, p=[0.002, 0.043, 0.955])
    start = time.perf_counter()
    split = split_by_patient(patients, kinds, seed=0)
    assert time.perf_counter() - start < 5  # generous: a correctness guard against quadratic code
    assert set(split) == {"train", "val", "test"}
