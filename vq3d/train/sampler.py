"""Deterministic, resumable data order shared between ranks.

Epoch `e` is a permutation of [0, n) drawn from (seed, e). Global step `s` of epoch
`e = s // steps_per_epoch` takes the slice of `batch_size * world_size` consecutive indices at
position `s % steps_per_epoch`; rank `r` gets the `r`-th block of `batch_size` of it. So

- ranks see disjoint indices, each exactly `batch_size` per step;
- the ranks' union at a step is the batch a single process with the global batch would see;
- starting at `start_step` continues exactly where an uninterrupted run would be.

    sampler = ResumableBatchSampler(len(ds), cfg.batch_size, cfg.seed, info.rank,
                                    info.world_size, start_step=step, total_steps=cfg.steps)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=...)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ResumableBatchSampler:
    """Yields lists of `batch_size` indices (this rank's share) for steps start_step, start_step+1, ...

    `drop_last=True`: each epoch drops the `n % global_batch` tail (needs n >= global batch).
    `drop_last=False`: the last batch of an epoch is filled up by wrapping round the epoch's
    permutation, so every index is seen each epoch (some twice).
    Iteration is endless when `total_steps` is None, else stops before `total_steps`.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        total_steps: int | None = None,
        drop_last: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"need n > 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start_step, self.total_steps = start_step, total_steps
        self.global_batch = batch_size * world_size
        if drop_last:
            if n < self.global_batch:
                raise ValueError(
                    f"the dataset has {n} items, fewer than one global batch of "
                    f"{self.global_batch} ({batch_size} x {world_size} ranks); lower the batch "
                    "size or let batches wrap (drop_last=False)"
                )
            self.steps_per_epoch = n // self.global_batch
        else:
            self.steps_per_epoch = -(-n // self.global_batch)
        self._cached_epoch = -1
        self._cached_order = np.empty(0, dtype=np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation, wrapped round to a whole number of global batches. (N,) int64."""
        if epoch != self._cached_epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            need = self.steps_per_epoch * self.global_batch
            reps = -(-need // self.n)
            self._cached_order = np.tile(perm, reps)[:need].astype(np.int64)
            self._cached_epoch = epoch
        return self._cached_order

    def batch_indices(self, step: int) -> list[int]:
        """This rank's indices for global step `step` (any step, in any order)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        start = pos * self.global_batch + self.rank * self.batch_size
        return self.epoch_order(epoch)[start : start + self.batch_size].tolist()

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield self.batch_indices(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an endless ResumableBatchSampler has no length (set total_steps)")
        return max(0, self.total_steps - self.start_step)
