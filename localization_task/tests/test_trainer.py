"""The localizer's losses and epoch sampler."""

import numpy as np
import pytest
import torch

from localization_task.heatmap.targets import gaussian_heatmap

from localization_task.split import KEYPOINTED, NEGATIVE, WEAK
from localization_task.heatmap.trainer import MixedEpochSampler, focal_heatmap_loss, weak_image_loss


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


# --- losses -----------------------------------------------------------------


def logits_of(prob: np.ndarray) -> torch.Tensor:
    prob = np.clip(prob, 1e-4, 1 - 1e-4)
    return torch.from_numpy(np.log(prob / (1 - prob)))[None, None].float()


def test_focal_loss_prefers_the_matching_prediction():
    target = gaussian_heatmap([[12.0, 9.0], [25.0, 20.0]], 32, sigma_hm=1.5)
    shifted = gaussian_heatmap([[15.0, 12.0], [28.0, 23.0]], 32, sigma_hm=1.5)
    target_t = torch.from_numpy(target)[None, None]
    matching = focal_heatmap_loss(logits_of(target), target_t)
    wrong = focal_heatmap_loss(logits_of(shifted), target_t)
    assert matching < wrong


def test_focal_loss_matches_the_written_out_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 6, 6, generator=generator) * 3
    target = torch.rand(2, 1, 6, 6, generator=generator) * 0.9
    target[0, 0, 2, 3] = target[1, 0, 5, 0] = target[1, 0, 1, 1] = 1.0
    total = 0.0
    for logit, y in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1 / (1 + np.exp(-logit))
        total += -(1 - p) ** 2 * np.log(p) if y == 1.0 else -((1 - y) ** 4) * p**2 * np.log(1 - p)
    assert focal_heatmap_loss(logits, target).item() == pytest.approx(total / 3, rel=1e-5)


def test_focal_loss_finite_for_negative_images_and_extreme_logits():
    empty = torch.zeros(2, 1, 16, 16)
    low = focal_heatmap_loss(torch.full_like(empty, -8.0), empty)
    high = focal_heatmap_loss(torch.full_like(empty, 80.0), empty)
    assert torch.isfinite(low) and torch.isfinite(high) and low < high
    with pytest.raises(ValueError, match="shape"):
        focal_heatmap_loss(empty, empty[:, 0])


def test_weak_loss_raises_positive_and_lowers_negative_maxima():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    labels = torch.tensor([1.0, 0.0])
    start_max = logits.detach().flatten(1).amax(1)
    optimiser = torch.optim.SGD([logits], lr=1.0)
    for _ in range(5):
        optimiser.zero_grad()
        weak_image_loss(logits, labels).backward()
        optimiser.step()
    end_max = logits.detach().flatten(1).amax(1)
    assert end_max[0] > start_max[0] and end_max[1] < start_max[1]


def test_weak_loss_stable_and_empty_batch():
    extreme = torch.tensor([[[[200.0]]], [[[-200.0]]]])
    assert torch.isfinite(weak_image_loss(extreme, torch.tensor([0.0, 1.0])))
    empty = torch.zeros(0, 1, 4, 4, requires_grad=True)
    loss = weak_image_loss(empty, torch.zeros(0))
    loss.backward()
    assert loss.item() == 0.0
