"""Synthetic images with CIFAR-10's shapes, for tests and smoke runs (no files, no network)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ssimlayer.data.base import Arrays, ImageClassificationDataModule

__all__ = ["SyntheticDataModule"]


class SyntheticDataModule(ImageClassificationDataModule):
    """Each class is a smooth random template plus pixel noise: learnable, in [0, 1], deterministic.

    Args:
        num_train, num_val: split sizes.
        image_size, channels: image shape.
        noise: std of the per-pixel Gaussian noise.
        seed: fixes the data (independent of the training seed).
        flip: random horizontal flip on the training split, as CIFAR-10.
        batch_size, num_workers, num_classes, pin_memory, device_resident: see the base class.

    Examples:
        >>> dm = SyntheticDataModule(num_train=8, num_val=4, batch_size=4)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, bool(x.min() >= 0 and x.max() <= 1)
        (torch.Size([4, 3, 32, 32]), True)
    """

    def __init__(
        self,
        num_train: int = 512,
        num_val: int = 256,
        image_size: int = 32,
        channels: int = 3,
        noise: float = 0.1,
        seed: int = 0,
        flip: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int = 10,
        pin_memory: bool | None = None,
        device_resident: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes, pin_memory, device_resident)
        self.num_train, self.num_val = num_train, num_val
        self.image_size, self.channels, self.noise, self.seed = image_size, channels, noise, seed
        self.flip = flip

    def _make(self, n: int, g: torch.Generator, templates: torch.Tensor) -> Arrays:
        y = torch.randint(0, self.num_classes, (n,), generator=g)
        x = templates[y] + self.noise * torch.randn(n, *templates.shape[1:], generator=g)
        return x.clamp(0, 1).mul(255).round().to(torch.uint8), y

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        coarse = torch.rand(self.num_classes, self.channels, 4, 4, generator=g)
        templates = F.interpolate(
            coarse, size=self.image_size, mode="bilinear", align_corners=False
        )  # (K, C, H, W), smooth, in [0, 1]
        train = self._make(self.num_train, g, templates)
        val = self._make(self.num_val, g, templates)
        flip = v2.RandomHorizontalFlip(p=0.5) if self.flip else None
        self._set_arrays(train, val, augment=flip)
