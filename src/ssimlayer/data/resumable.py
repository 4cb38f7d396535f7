"""A shuffling training loader that can resume in the middle of an epoch, bit for bit.

A run killed mid-epoch and resumed from its last checkpoint must see the same batches, with the same
random flips, as a run that was never interrupted. Two things make that so:

- the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, and the augmentation of
  the sample at position ``p`` of that epoch runs under a torch seed drawn from ``(seed, e, p)``, so
  neither depends on how much of the global random stream was used before;
- the loader has ``state_dict``/``load_state_dict`` (Lightning saves them in every checkpoint),
  holding the epoch and how many batches of it were consumed; after ``load_state_dict`` the next
  iteration skips those batches.

Exactness holds with ``num_workers=0`` and with workers alike: both the order and the per-sample
seeds are fixed before any worker sees an index. Under DDP each rank takes its shard of the
epoch's order (as ``DistributedSampler`` does), so the same holds per rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableLoader"]

_MIX = 0x9E3779B1  # odd 32-bit constant: spreads (seed, epoch) over distinct generator seeds


def shard(order: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s share of ``order``, as ``DistributedSampler``: padded by wrapping around to a
    multiple of ``world_size``, then every ``world_size``-th entry from ``rank``."""
    return torch.cat([order, order[: -len(order) % world_size]])[rank::world_size]


class EpochPosition:
    """The module docstring's ``state_dict``/``load_state_dict``, for a loader whose ``sampler`` has
    ``epoch`` and ``set_epoch``, and whose ``_batches(skip)`` yields the epoch's batches from the
    ``skip``-th on."""

    _consumed = 0  # batches of the current epoch handed out so far
    _resume: tuple[int, int] | None = None  # (epoch, batches to skip) from a checkpoint
    sampler: Any

    def _batches(self, skip: int) -> Iterator[Any]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        # Runs at the first next(), after Lightning's set_epoch: the skip applies only to the epoch
        # that was interrupted, never to the one after an end-of-epoch checkpoint.
        resume, self._resume = self._resume, None
        skip = resume[1] if resume is not None and resume[0] == self.sampler.epoch else 0
        self._consumed = skip
        for batch in self._batches(skip):
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch = int(state["epoch"])
        self.sampler.set_epoch(epoch)
        self._resume = (epoch, int(state["batches_consumed"]))


class _EpochSampler(DistributedSampler):
    """Yields ``(index, item_seed)`` in the order fixed by ``(seed, epoch)``, from ``start`` on.

    Each rank takes its :func:`shard` of that order. It subclasses ``DistributedSampler`` only so
    that Lightning keeps it under DDP (Lightning replaces any other sampler with its own);
    ``DistributedSampler.__init__`` is not called.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"ResumableLoader: rank must be in [0, {world_size}), got {rank}")
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.rank, self.num_replicas = rank, world_size
        self.shuffle, self.drop_last = True, False
        self.num_samples = -(-n // world_size)
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed((self.seed * _MIX + self.epoch) % 2**63)
        order = torch.randperm(self.n, generator=g)
        item_seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        order = shard(order, self.rank, self.num_replicas).tolist()
        item_seeds = shard(item_seeds, self.rank, self.num_replicas).tolist()
        start, self.start = self.start, 0
        for p in range(start, len(order)):
            yield order[p], item_seeds[p]


class _SeededItems(Dataset):
    """``dataset[i]`` computed with the CPU generator seeded by ``item_seed``; the global RNG is kept.

    Only the CPU generator is seeded (what CPU-side transforms draw from): ``torch.manual_seed``
    would also queue a CUDA, MTIA and XPU reseed, each recording a formatted stack trace while those
    devices are uninitialised (about 0.2 ms per sample on a 2-core CPU, more than a small model's
    compute per sample), and would reseed the GPUs' generators on every sample where they are.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, item_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed)
            return self.dataset[index]


class ResumableLoader(EpochPosition, DataLoader):
    """A shuffling ``DataLoader`` whose position can be saved and restored mid-epoch.

    Args:
        dataset: a map-style dataset; its transforms may use torch's global RNG.
        batch_size: as ``DataLoader``.
        seed: fixes every epoch's order and augmentation (independent of the global seed).
        rank, world_size: this process's shard of every epoch (DDP).
        **kwargs: passed to ``DataLoader`` (``num_workers``, ``pin_memory``, ...); not ``shuffle``,
            ``sampler`` or ``batch_sampler``.

    Examples:
        >>> ds = torch.utils.data.TensorDataset(torch.arange(10))
        >>> a = ResumableLoader(ds, batch_size=4, seed=0)
        >>> it = iter(a); first = next(it)[0]; state = a.state_dict()
        >>> b = ResumableLoader(ds, batch_size=4, seed=0); b.load_state_dict(state)
        >>> torch.equal(next(iter(b))[0], next(it)[0])
        True
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        **kwargs: Any,
    ) -> None:
        sampler = _EpochSampler(len(dataset), seed, rank, world_size)  # type: ignore[arg-type]
        super().__init__(
            _SeededItems(dataset),
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )

    def _batches(self, skip: int) -> Iterator[Any]:
        self.sampler.start = skip * self.batch_size
        return DataLoader.__iter__(self)  # not super(): that is EpochPosition's, which calls this
