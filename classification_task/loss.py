"""Class-weighted cross-entropy (optionally focal) over the two answer logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_loss(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: float = 20.0, focal_gamma: float = 0.0
) -> torch.Tensor:
    """Weighted mean over the batch, like `F.cross_entropy(weight=[1, pos_weight])`.

    With focal_gamma > 0 each term is scaled by (1 - p_true) ** gamma, which
    down-weights the many easy negatives.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_p_true = log_probs.gather(1, labels[:, None]).squeeze(1)
    weights = torch.where(labels == 1, pos_weight, 1.0).to(log_p_true)
    per_item = -log_p_true
    if focal_gamma > 0:
        per_item = per_item * (1 - log_p_true.exp()) ** focal_gamma
    return (weights * per_item).sum() / weights.sum()
