"""Shuffled minibatches, reproducible from a seed."""

from __future__ import annotations

import torch


class Minibatches:
    """Iterating gives one epoch of (inputs, target) batches in a fresh seeded order.

    ``batch_size=None`` gives the whole set as one batch, in its own order.
    """

    def __init__(self, inputs: torch.Tensor, target: torch.Tensor, batch_size: int | None, seed: int = 0):
        if len(inputs) != len(target):
            raise ValueError(f"{len(inputs)} inputs but {len(target)} targets")
        self.inputs, self.target, self.batch_size = inputs, target, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        if self.batch_size is None:
            yield self.inputs, self.target
            return
        order = torch.randperm(len(self.inputs), generator=self.generator).to(self.inputs.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.inputs[index], self.target[index]


def split(inputs: torch.Tensor, target: torch.Tensor, held_out: float, seed: int):
    """A seeded shuffle into (train inputs, train target, held-out inputs, held-out target)."""
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    cut = len(inputs) - int(len(inputs) * held_out)
    train, test = order[:cut], order[cut:]
    return inputs[train], target[train], inputs[test], target[test]


class Shards:
    """This process's share of every batch of ``batches``, for training under torchrun.

    Every process iterates the same batches (same seed) and keeps the
    ``rank``-th of ``world`` nearly equal contiguous parts of each.
    """

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for inputs, target in self.batches:
            yield torch.tensor_split(inputs, self.world)[self.rank], torch.tensor_split(target, self.world)[self.rank]
