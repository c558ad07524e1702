"""Rotating balanced epochs: every positive each epoch, a fresh slice of the negatives.

With 4.5 % positives, plain sampling shows the model few nodules; balancing
by throwing negatives away wastes data. Here each epoch is all positives plus
an equal number of negatives taken as the next non-overlapping chunk of one
seeded permutation of all negatives, so successive epochs walk through every
negative.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class RotatingBalancedSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int], seed: int = 0):
        labels = np.asarray(labels)
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels == 0)
        if len(self.positives) == 0 or len(self.negatives) == 0:
            raise ValueError("the balanced sampler needs both positive and negative training images.")
        self.seed = seed
        self.epoch = 0
        self.chunk = min(len(self.positives), len(self.negatives))
        self.negative_order = np.random.default_rng(seed).permutation(self.negatives)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch; the epoch alone decides the order."""
        self.epoch = epoch

    def negatives_for_epoch(self, epoch: int) -> np.ndarray:
        start = epoch * self.chunk
        positions = np.arange(start, start + self.chunk) % len(self.negative_order)
        return self.negative_order[positions]

    def __len__(self) -> int:
        return len(self.positives) + self.chunk

    def __iter__(self) -> Iterator[int]:
        indices = np.concatenate([self.positives, self.negatives_for_epoch(self.epoch)])
        order = np.random.default_rng([self.seed, self.epoch]).permutation(indices)
        return iter(order.tolist())
