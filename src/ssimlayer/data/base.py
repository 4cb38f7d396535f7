"""What every datamodule here shares: [0, 1] float images, and loaders for the FGSM sweep."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ssimlayer.data.device_loader import DeviceLoader, DeviceSampler, check_images
from ssimlayer.data.groups import BatchGroups
from ssimlayer.data.resumable import ResumableLoader

__all__ = ["ArrayDataset", "ImageClassificationDataModule"]

Transform = Callable[[Tensor], Tensor] | None
Arrays = tuple[Tensor, Tensor]  # (uint8 images (N, C, H, W), labels (N,))


def permuted(images: Tensor, labels: Tensor, generator: torch.Generator) -> Arrays:
    """``(images, labels)`` in one random order drawn from ``generator``."""
    perm = torch.randperm(len(labels), generator=generator)
    return images[perm], labels[perm]


class ArrayDataset(Dataset):
    """Images held in memory as ``uint8 (N, C, H, W)``; served as float ``(C, H, W)`` in [0, 1].

    Examples:
        >>> ds = ArrayDataset(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), torch.tensor([0, 1]))
        >>> x, y = ds[1]
        >>> x.shape, x.max().item(), y.item()
        (torch.Size([3, 4, 4]), 1.0, 1)
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Transform = None) -> None:
        check_images("ArrayDataset", images, labels)
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]


class ImageClassificationDataModule(pl.LightningDataModule):
    """Base class: subclasses fill ``train_set``, ``val_set`` and ``train_eval_set`` in ``setup``.

    ``train_eval_set`` is the training split without augmentation: the FGSM sweep (Fig. 9) attacks
    both splits, and flips would only add noise to that measurement.

    With ``device_resident=True`` the train and val loaders are ``DeviceLoader`` objects: the
    ``uint8`` split on the trainer's device, order and flips drawn there, no worker processes. Only
    an :class:`ArrayDataset` with no transform or a horizontal flip can be served that way.

    When the model being fitted has ``steps_per_execution = k > 1`` (see
    :class:`ssimlayer.lightning.ClassifierModule`), the train loader hands out lists of ``k``
    batches (:class:`ssimlayer.data.groups.BatchGroups`): the same batches, ``k`` per Lightning
    iteration.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int = 10,
        pin_memory: bool | None = None,
        device_resident: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.num_classes = batch_size, num_workers, num_classes
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.device_resident = device_resident
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_eval_set: Dataset | None = None

    def _shard(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def _loader(self, dataset: Dataset | None, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a loader")
        kwargs = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        if not train:
            return DataLoader(dataset, shuffle=False, **kwargs)
        # Resumable mid-epoch: order and flips follow the run's seed (set by seed_everything) and
        # the epoch, so a run resumed from a mid-epoch checkpoint sees the same batches. Under DDP
        # it shards each epoch itself (Lightning leaves its sampler in place).
        rank, world = self._shard()
        return ResumableLoader(
            dataset, seed=torch.initial_seed(), rank=rank, world_size=world, **kwargs
        )

    def _device_loader(self, dataset: Dataset | None, shuffle: bool) -> DeviceLoader:
        if not isinstance(dataset, ArrayDataset):
            raise ValueError(
                f"{type(self).__name__}: device_resident needs an ArrayDataset, got "
                f"{type(dataset).__name__} (call setup() first)"
            )
        t = dataset.transform
        if t is not None and not isinstance(t, v2.RandomHorizontalFlip):
            raise ValueError(
                f"{type(self).__name__}: device_resident supports only a random "
                f"horizontal flip, not {t}"
            )
        # The model is already on its device when loaders are built.
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        rank, world = self._shard()
        return DeviceLoader(
            dataset.images,
            dataset.labels,
            self.batch_size,
            sampler=DeviceSampler(len(dataset), shuffle=shuffle, rank=rank, world_size=world),
            flip=t.p if t is not None else 0.0,
            device=device,
        )

    def _set_arrays(
        self, train: Arrays, val: Arrays, augment: Transform = None, plain: Transform = None
    ) -> None:
        """The three splits from in-memory ``(images, labels)``; ``augment`` on ``train_set`` only."""
        self.train_set = ArrayDataset(*train, augment)
        self.train_eval_set = ArrayDataset(*train, plain)
        self.val_set = ArrayDataset(*val, plain)

    def train_dataloader(self) -> DataLoader | DeviceLoader | BatchGroups:
        if self.device_resident:
            loader = self._device_loader(self.train_set, shuffle=True)
        else:
            loader = self._loader(self.train_set, train=True)
        module = self.trainer.lightning_module if self.trainer else None
        k = getattr(module, "steps_per_execution", 1)
        return BatchGroups(loader, k) if k > 1 else loader

    def val_dataloader(self) -> DataLoader | DeviceLoader:
        if self.device_resident:
            return self._device_loader(self.val_set, shuffle=False)
        return self._loader(self.val_set)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Un-augmented, unshuffled loader of ``split`` (``"train"`` or ``"val"``) for evaluation."""
        if self.val_set is None:
            self.setup("fit")
        sets = {"train": self.train_eval_set, "val": self.val_set}
        if split not in sets:
            raise ValueError(
                f"eval_dataloader: unknown split {split!r}; choose one of {list(sets)}"
            )
        return self._loader(sets[split])
