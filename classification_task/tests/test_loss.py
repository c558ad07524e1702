"""The answer-token loss equals a hand-computed weighted cross-entropy."""

import math

import torch
import torch.nn.functional as F

from classification_task.loss import answer_loss


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
