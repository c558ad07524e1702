"""The localizer's patient split and epoch mix: no leaks, right proportions, determinism."""

import time

import numpy as np
import pytest

from localization_task.sampling import (
    KEYPOINTED,
    NEGATIVE,
    WEAK,
    MixedEpochSampler,
    image_kinds,
    split_by_patient,
)


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


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_epoch_has_every_keypointed_image_and_the_asked_proportions():
    kinds = np.array([KEYPOINTED] * 5 + [WEAK] * 20 + [NEGATIVE] * 100)
    sampler = MixedEpochSampler(kinds, weak_per_keypointed=2, negatives_per_keypointed=3, seed=0)
    for epoch in range(4):
        indices = _epoch(sampler, epoch)
        assert len(indices) == len(sampler) == 5 + 10 + 15
        assert len(set(indices)) == len(indices)
        assert sorted(i for i in indices if kinds[i] == KEYPOINTED) == list(range(5))
        assert sum(kinds[i] == WEAK for i in indices) == 10


def test_weak_and_negative_slices_rotate_through_all():
    kinds = np.array([KEYPOINTED] * 4 + [WEAK] * 8 + [NEGATIVE] * 12)
    sampler = MixedEpochSampler(kinds, weak_per_keypointed=1, negatives_per_keypointed=1, seed=4)
    weak = [i for epoch in range(2) for i in _epoch(sampler, epoch) if kinds[i] == WEAK]
    negative = [i for epoch in range(3) for i in _epoch(sampler, epoch) if kinds[i] == NEGATIVE]
    assert sorted(weak) == list(range(4, 12))  # two epochs of 4 cover all 8 exactly once
    assert sorted(negative) == list(range(12, 24))  # three epochs of 4 cover all 12


def test_zero_weight_leaves_a_kind_out_and_order_is_deterministic():
    kinds = np.array([KEYPOINTED] * 3 + [WEAK] * 3 + [NEGATIVE] * 3)
    sampler = MixedEpochSampler(kinds, weak_per_keypointed=0, negatives_per_keypointed=1, seed=2)
    assert not any(kinds[i] == WEAK for i in _epoch(sampler, 0))
    again = MixedEpochSampler(kinds, weak_per_keypointed=0, negatives_per_keypointed=1, seed=2)
    assert _epoch(sampler, 5) == _epoch(again, 5)
    assert _epoch(sampler, 5) != _epoch(sampler, 6) or _epoch(sampler, 6) != _epoch(sampler, 7)


def test_needs_keypointed_images():
    with pytest.raises(ValueError, match="keypoints"):
        MixedEpochSampler([WEAK, NEGATIVE])
