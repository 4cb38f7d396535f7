"""CIFAR-10 as a LightningDataModule: local files in either official format, or a torchvision
download when asked. The test split serves as validation, as in the paper (§3)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.transforms import v2

from ssimlayer.data.base import ImageClassificationDataModule, permuted
from ssimlayer.data.cifar10_files import (
    ALL_TRAIN_BATCHES,
    DatasetNotFoundError,
    find_cifar10,
    load_cifar10,
    verify_cifar10,
)

__all__ = ["CIFAR10DataModule"]

log = logging.getLogger(__name__)


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10 with the §3.1 augmentation (random horizontal flip); no normalisation here.

    Args:
        root: folder holding CIFAR-10 (see :data:`ssimlayer.data.cifar10_files.EXPECTED_LAYOUT`).
        download: if the files are absent, fetch the python version with torchvision into ``root``.
        verify: check sizes and checksums before use.
        flip: random horizontal flip on the training split.
        val_shuffle_seed: the test split of some copies is sorted by class; it is permuted once with
            this seed so that any prefix (``limit_val_batches``, a partial sweep) covers all classes.
        train_batches: which of ``data_batch_1`` ... ``data_batch_5`` form the training split
            (default all five, 50,000 images); e.g. ``[1]`` trains on the first 10,000 only, for
            schedules that must fit a CPU or a small transfer. Only those files need to exist.
        batch_size, num_workers, num_classes, pin_memory, device_resident: see the base class.
    """

    def __init__(
        self,
        root: str | Path,
        download: bool = False,
        verify: bool = True,
        flip: bool = True,
        val_shuffle_seed: int = 0,
        train_batches: Sequence[int] = ALL_TRAIN_BATCHES,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int = 10,
        pin_memory: bool | None = None,
        device_resident: bool = False,
    ) -> None:
        if num_classes != 10:
            raise ValueError(f"CIFAR-10 has 10 classes; data.num_classes is {num_classes}")
        super().__init__(batch_size, num_workers, num_classes, pin_memory, device_resident)
        self.root, self.download, self.verify = Path(root), download, verify
        self.flip, self.val_shuffle_seed = flip, val_shuffle_seed
        self.train_batches = tuple(train_batches)

    def prepare_data(self) -> None:
        try:
            find_cifar10(self.root, self.train_batches)
        except DatasetNotFoundError:
            if not self.download:
                raise
            from torchvision.datasets import CIFAR10

            log.info("Downloading CIFAR-10 (python version) into %s", self.root)
            for train in (True, False):
                CIFAR10(str(self.root), train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        folder, fmt = find_cifar10(self.root, self.train_batches)
        if self.verify:
            verify_cifar10(folder, fmt, self.train_batches)
        data = load_cifar10(folder, fmt, self.train_batches)
        log.info(
            "CIFAR-10 (%s format) from %s: %d train, %d test",
            fmt,
            folder,
            len(data["train"][1]),
            len(data["test"][1]),
        )
        test = permuted(*data["test"], torch.Generator().manual_seed(self.val_shuffle_seed))
        flip = v2.RandomHorizontalFlip(p=0.5) if self.flip else None
        self._set_arrays(data["train"], test, augment=flip)
