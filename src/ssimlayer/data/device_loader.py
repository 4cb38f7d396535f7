"""A loader whose whole dataset lives on the training device (airbench style).

At batch 32 a CIFAR-10 step on a GPU takes a few milliseconds, so a CPU ``DataLoader`` (collation,
pinned copies, worker processes) sets the pace. :class:`DeviceLoader` keeps the ``uint8`` images on
the device, draws each epoch's order and flips there, and yields float ``[0, 1]`` batches: the same
distribution of batches as a shuffled ``DataLoader`` over an ``ArrayDataset`` with a random flip,
without any per-sample Python.

Like :class:`ssimlayer.data.resumable.ResumableLoader` it resumes mid-epoch exactly: an epoch's
order and flips depend only on ``(seed, epoch)``, and ``state_dict``/``load_state_dict`` (which
Lightning saves in every checkpoint) hold how many batches of the epoch were consumed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor

from ssimlayer.data.resumable import EpochPosition, shard

__all__ = ["DeviceLoader", "DeviceSampler"]


def check_images(owner: str, images: Tensor, labels: Tensor) -> None:
    """``ValueError`` (naming ``owner``) unless ``images`` is ``uint8 (N, C, H, W)`` with ``N`` labels."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"{owner}: expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) != len(labels):
        raise ValueError(f"{owner}: {len(images)} images but {len(labels)} labels")


class DeviceSampler:
    """Each epoch's order: a permutation seeded by ``seed + epoch``, sharded over ranks.

    Lightning calls ``loader.sampler.set_epoch(epoch)`` at the start of every epoch (as for a
    ``DistributedSampler``), so a resumed run draws the same orders as an uninterrupted one. Each
    rank takes its :func:`~ssimlayer.data.resumable.shard` of the order, as ``DistributedSampler``.

    Args:
        n: dataset size.
        shuffle: draw a permutation (else ``0 .. n-1``).
        seed: base seed; ``None`` = Lightning's global seed (``PL_GLOBAL_SEED``) or 0.
        rank, world_size: this process's shard.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"DeviceSampler: rank must be in [0, {world_size}), got {rank}")
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world_size)  # per-rank count, padded as DistributedSampler

    def indices(self, device: torch.device) -> Tensor:
        """This rank's order for the current epoch, ``(len(self),)`` int64 on ``device``."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)  # on the CPU: same order on every device
        else:
            order = torch.arange(self.n)
        return shard(order, self.rank, self.world_size).to(device, non_blocking=True)


class DeviceLoader(EpochPosition):
    """Batches of a ``uint8`` image tensor held on ``device``; flips drawn on the device.

    Args:
        images: ``uint8 (N, C, H, W)``; copied to ``device`` once.
        labels: ``(N,)`` class indices.
        batch_size: samples per batch.
        sampler: the order (default: a shuffled :class:`DeviceSampler` over all ``N``).
        flip: probability of a horizontal flip per sample (0 = none); a fresh Bernoulli draw per
            sample and epoch, as ``RandomHorizontalFlip``.
        drop_last: drop the last incomplete batch (``DataLoader``'s default, ``False``, keeps it).
        device: where the data lives and the batches come out.

    Shape:
        - Output: ``x`` float32 ``(B, C, H, W)`` in [0, 1] and ``y`` int64 ``(B,)`` on ``device``.

    Examples:
        >>> loader = DeviceLoader(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), 4)
        >>> [tuple(x.shape) for x, _ in loader]
        [(4, 3, 4, 4), (4, 3, 4, 4), (2, 3, 4, 4)]
    """

    batch_sampler = None  # Lightning inspects ``sampler``/``batch_sampler`` as on a DataLoader

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        sampler: DeviceSampler | None = None,
        flip: float = 0.0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        check_images("DeviceLoader", images, labels)
        if batch_size < 1:
            raise ValueError(f"DeviceLoader: batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"DeviceLoader: flip is a probability, got {flip}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        self.batch_size, self.flip, self.drop_last = batch_size, flip, drop_last
        self.sampler = sampler if sampler is not None else DeviceSampler(len(images))
        # Flips come from the device's own generator, seeded per epoch like the order.
        self._flip_gen = torch.Generator(device=self.device)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self, skip: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.sampler.indices(self.device)
        flips = None
        if self.flip > 0:
            s = self.sampler
            self._flip_gen.manual_seed((s.seed + s.epoch) * 1_000_003 + s.rank + 1)
            flips = torch.rand(len(order), device=self.device, generator=self._flip_gen) < self.flip
        for b in range(skip, len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[batch]
            x = self.images[idx].float().div_(255.0)  # (B, C, H, W) in [0, 1]
            if flips is not None:
                x = torch.where(flips[batch].view(-1, 1, 1, 1), x.flip(-1), x)
            yield x, self.labels[idx]
