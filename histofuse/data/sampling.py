"""Training epochs drawn as a pure function of (seed, epoch).

Each draw carries its own augmentation seed, so an epoch's samples and their
augmentations are the same whatever the number of workers or processes, and a
run resumed at epoch N sees exactly what an uninterrupted run saw.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Yields ``(dataset index, augmentation seed)`` pairs, one per sample of the epoch.

    ``balanced`` draws every class equally often, with replacement; otherwise a
    permutation. The epoch has ``len(labels)`` draws either way. Under several
    processes Accelerate deals the batches of this one draw out in turn, so each
    process trains on its own disjoint share and the epoch keeps its length.
    """

    def __init__(self, labels: list[int], *, balanced: bool, seed: int):
        self.labels = np.asarray(labels)
        self.balanced = balanced
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.labels)
        if self.balanced:
            counts = np.bincount(self.labels)
            weights = 1.0 / counts[self.labels]
            order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
        else:
            order = rng.permutation(n)
        seeds = rng.integers(0, 2**31 - 1, size=n)
        return iter(zip(order.tolist(), seeds.tolist()))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every process starts an epoch from (dropout, stochastic depth)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
