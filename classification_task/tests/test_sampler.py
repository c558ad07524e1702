"""Rotating balanced sampler: balance, coverage of negatives, determinism."""

import numpy as np
import pytest

from classification_task.sampler import RotatingBalancedSampler


def _labels(n_pos=7, n_neg=50, seed=0):
    labels = np.array([1] * n_pos + [0] * n_neg)
    return np.random.default_rng(seed).permutation(labels)


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_has_all_positives_and_as_many_negatives():
    labels = _labels()
    sampler = RotatingBalancedSampler(labels, seed=3)
    for epoch in range(5):
        indices = _epoch(sampler, epoch)
        assert len(indices) == len(sampler) == 14
        assert len(set(indices)) == len(indices)  # no repeats within an epoch
        assert sorted(i for i in indices if labels[i] == 1) == sorted(np.flatnonzero(labels == 1))
        assert sum(labels[i] == 0 for i in indices) == 7


def test_negatives_are_non_overlapping_chunks_covering_all():
    labels = _labels(n_pos=7, n_neg=49)
    sampler = RotatingBalancedSampler(labels, seed=1)
    seen = []
    for epoch in range(7):  # 7 epochs x 7 negatives = all 49 exactly once
        seen += [i for i in _epoch(sampler, epoch) if labels[i] == 0]
    assert sorted(seen) == sorted(np.flatnonzero(labels == 0))
    # The 8th epoch starts the permutation again.
    assert set(sampler.negatives_for_epoch(7)) == set(sampler.negatives_for_epoch(0))


def test_coverage_when_chunks_do_not_divide_the_negatives():
    labels = _labels(n_pos=7, n_neg=50)
    sampler = RotatingBalancedSampler(labels, seed=1)
    seen = set()
    for epoch in range(8):  # ceil(50 / 7) epochs
        seen |= set(sampler.negatives_for_epoch(epoch).tolist())
    assert seen == set(np.flatnonzero(labels == 0).tolist())


def test_deterministic_given_seed_and_epoch():
    labels = _labels()
    first, second = RotatingBalancedSampler(labels, seed=5), RotatingBalancedSampler(labels, seed=5)
    assert _epoch(first, 2) == _epoch(second, 2)
    assert _epoch(first, 2) != _epoch(first, 3)
    assert _epoch(first, 0) != _epoch(RotatingBalancedSampler(labels, seed=6), 0)


def test_needs_both_classes():
    with pytest.raises(ValueError, match="both positive and negative"):
        RotatingBalancedSampler([0, 0, 0])
