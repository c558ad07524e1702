"""The trainer's pieces: the answer-token loss against hand-computed and torch cross-entropy, the
rotating balanced sampler (balance, coverage of negatives, determinism) and the class-weighted one."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classification_task.trainer import (
    ClassWeightedSampler,
    NoduleTrainer,
    RotatingBalancedSampler,
    answer_loss,
    compute_metrics,
)

# ----------------------------------------------------------------------------- loss


def test_equals_hand_computed_weighted_ce():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    p_true = [math.exp(2) / (math.exp(2) + 1), math.exp(1) / (1 + math.exp(1)), 0.5]
    weights = [1.0, 20.0, 20.0]
    expected = -sum(w * math.log(p) for w, p in zip(weights, p_true)) / sum(weights)
    assert math.isclose(answer_loss(logits, labels, pos_weight=20.0).item(), expected, rel_tol=1e-6)


def test_matches_torch_weighted_cross_entropy_on_random_batches():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(16, 2, generator=generator) * 3
        labels = torch.randint(0, 2, (16,), generator=generator)
        expected = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 7.5]))
        assert torch.allclose(answer_loss(logits, labels, pos_weight=7.5), expected, atol=1e-6)


def test_focal_loss_down_weights_easy_examples():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.5]])
    labels = torch.tensor([0, 1])
    log_p = F.log_softmax(logits, -1)[[0, 1], [0, 1]]
    gamma = 2.0
    terms = -(1 - log_p.exp()) ** gamma * log_p
    expected = (terms[0] * 1 + terms[1] * 20) / 21
    assert torch.allclose(answer_loss(logits, labels, 20.0, focal_gamma=gamma), expected, atol=1e-6)
    assert answer_loss(logits, labels, 20.0, focal_gamma=gamma) < answer_loss(logits, labels, 20.0)


def test_gradient_reaches_the_logits():
    logits = torch.zeros(4, 2, requires_grad=True)
    answer_loss(logits, torch.tensor([0, 1, 0, 1])).backward()
    assert logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- sampler


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


def test_weighted_sampler_draws_both_classes_about_equally():
    labels = _labels(n_pos=20, n_neg=380)
    sampler = ClassWeightedSampler(labels, seed=0)
    drawn = np.concatenate([_epoch(sampler, epoch) for epoch in range(10)])
    assert len(sampler) == len(labels) and drawn.size == 10 * len(labels)
    assert 0.45 < labels[drawn].mean() < 0.55  # 5 % positives in the data, half in the draws
    assert set(drawn[labels[drawn] == 1]) == set(np.flatnonzero(labels == 1))  # every positive drawn


def test_weighted_sampler_is_a_function_of_seed_and_epoch():
    labels = _labels()
    first, second = ClassWeightedSampler(labels, seed=5), ClassWeightedSampler(labels, seed=5)
    assert _epoch(first, 2) == _epoch(second, 2)  # a resumed run redraws the same epoch
    assert _epoch(first, 2) == _epoch(first, 2)  # iterating twice does not advance a generator
    assert _epoch(first, 2) != _epoch(first, 3)
    assert _epoch(first, 0) != _epoch(ClassWeightedSampler(labels, seed=6), 0)


def test_weighted_sampler_needs_both_classes():
    with pytest.raises(ValueError, match="both positive and negative"):
        ClassWeightedSampler([1, 1])


@pytest.mark.parametrize("kind, expected", [("balanced", RotatingBalancedSampler),
                                            ("weighted", ClassWeightedSampler)])
def test_trainer_builds_the_chosen_sampler(kind, expected):
    dataset = SimpleNamespace(labels=_labels())
    trainer = SimpleNamespace(sampler_kind=kind, sampler_seed=3, train_dataset=dataset)
    sampler = NoduleTrainer._get_train_sampler(trainer)
    assert isinstance(sampler, expected) and sampler.seed == 3


def test_compute_metrics_reports_f_beta_when_asked():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [0.5, 0.0]])
    prediction = SimpleNamespace(predictions=logits, label_ids=np.array([0, 1, 1, 1]))
    assert "f_beta" not in compute_metrics(prediction)
    result = compute_metrics(prediction, beta=2.0)
    assert result["f_beta"] == pytest.approx(5 * 2 / (5 * 2 + 4 * 1))  # tp 2, fn 1, fp 0
