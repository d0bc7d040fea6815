"""The data order of :func:`vqkit.train.fit`: endless seeded epochs, resumable and shardable."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Endless batches: a permutation seeded by ``seed + epoch`` per epoch, drop_last.

    Iteration starts at ``(start_epoch, start_batch)`` so a resumed run sees the same batches.
    With ``shard=(rank, world)`` it yields rank's contiguous slice of each global batch of
    ``batch_size`` items: the ranks' slices, in rank order, make up exactly the batch a single
    process sees, and the data position (epoch, batch) means the same on every rank.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_epoch: int = 0,
        start_batch: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.batches_per_epoch = num_items // batch_size
        index, count = shard
        if not 0 <= index < count or batch_size % count:
            raise ValueError(
                f"cannot split batches of {batch_size} into {count} equal shards (shard {index}); "
                f"batch_size is global: make it a multiple of the number of processes"
            )
        self.slice = slice(index * batch_size // count, (index + 1) * batch_size // count)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, first = self.start_epoch, self.start_batch
        while True:
            order = torch.randperm(
                self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
            for b in range(first, self.batches_per_epoch):
                yield order[b * self.batch_size : (b + 1) * self.batch_size][self.slice].tolist()
            epoch, first = epoch + 1, 0

    def indices(self, epoch: int, batch: int) -> list[int]:
        """The data set indices of batch ``batch`` of ``epoch`` (to name a bad batch)."""
        order = torch.randperm(
            self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch)
        )
        return order[batch * self.batch_size : (batch + 1) * self.batch_size].tolist()
