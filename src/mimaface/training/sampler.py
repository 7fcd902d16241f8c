"""A sampler that every process can resume at an exact batch: the data position is ``(epoch, batch)``.

Each epoch is a permutation drawn from ``(seed, epoch)``, cut to a whole number of global
batches (``batch_size * num_processes``) and dealt out to the processes in turn, so the
processes see disjoint samples and a step's global batch does not depend on the process count
at all except through its split.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ResumableShardSampler(Sampler[list[int]]):
    """Yields this process's batches of indices, starting at ``batch`` of ``epoch`` (see :meth:`set_position`)."""

    def __init__(self, length: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size * world_size > length:
            raise ValueError(f"{length} samples cannot fill one global batch of {batch_size} x {world_size} processes")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, batch: int) -> None:
        """The next iteration starts at global batch ``batch`` of ``epoch``."""
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"batch {batch} is outside an epoch of {self.batches_per_epoch} batches")
        self.epoch, self.start_batch = epoch, batch

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """All processes' batches of an epoch: (batches, world_size, batch_size) indices."""
        order = np.random.default_rng((self.seed, epoch, 0x5A4D)).permutation(self.length)
        n = self.batches_per_epoch
        return order[: n * self.world_size * self.batch_size].reshape(n, self.world_size, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        for b in range(self.start_batch, len(batches)):
            yield batches[b, self.rank].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch
