"""An ``ImageFolder`` datamodule for §3.4.1 (ImageNet images of the CIFAR-10 classes).

The images are randomly resized and cropped to 32x32 and randomly flipped for training; a fixed,
class-stratified split holds out ``val_fraction`` (20 % by default: the paper's 12K / 3K of 15K).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ssimlayer.data.base import ImageClassificationDataModule
from ssimlayer.data.cifar10_files import DatasetNotFoundError

__all__ = ["ImageFolderDataModule", "stratified_split"]


def stratified_split(
    targets: list[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` with ``round(val_fraction * n_c)`` of each class held out.

    Examples:
        >>> tr, va = stratified_split([0] * 10 + [1] * 5, 0.2, seed=0)
        >>> len(tr), len(va)
        (12, 3)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    t = torch.as_tensor(targets)
    train, val = [], []
    for c in t.unique().tolist():
        idx = torch.nonzero(t == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = round(val_fraction * len(idx))
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


class ImageFolderDataModule(ImageClassificationDataModule):
    """``root/<class>/<image>`` folders, split once into train/val with a fixed seed.

    Args:
        root: the folder with one sub-folder per class.
        image_size: output size (32: CIFAR-10's).
        val_fraction: share of each class held out for validation.
        split_seed: fixes the split (independent of the training seed).
        batch_size, num_workers, num_classes, pin_memory: see the base class.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 32,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int = 10,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes, pin_memory)
        self.root, self.image_size = Path(root), image_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        self.train_transform = v2.Compose(
            [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), *to_float]
        )
        # Validation: the whole image, shorter side resized, centre crop (the paper is silent).
        self.eval_transform = v2.Compose(
            [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), *to_float]
        )

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        root = self.root.expanduser().resolve()
        try:
            train_view = ImageFolder(str(root), transform=self.train_transform)
        except (FileNotFoundError, RuntimeError) as e:  # missing folder / no images
            raise DatasetNotFoundError(
                f"Image folder dataset not found or empty at {root} ({e}). Set data.root=/path. "
                f"Expected layout: one sub-folder per class holding its images, e.g. "
                f"{root}/airplane/xxx.jpg, {root}/automobile/yyy.jpg, ..."
            ) from e
        if len(train_view.classes) != self.num_classes:
            raise ValueError(
                f"{root} has {len(train_view.classes)} class folders {train_view.classes}, but "
                f"data.num_classes={self.num_classes}"
            )
        eval_view = ImageFolder(str(root), transform=self.eval_transform)
        train_idx, val_idx = stratified_split(
            train_view.targets, self.val_fraction, self.split_seed
        )
        self.train_set = Subset(train_view, train_idx)
        self.train_eval_set = Subset(eval_view, train_idx)
        self.val_set = Subset(eval_view, val_idx)
