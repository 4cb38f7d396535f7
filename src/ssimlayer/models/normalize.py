"""Per-channel normalisation as the first op of a model, so inputs (and attacks) live in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalize", "CIFAR10_MEAN", "CIFAR10_STD"]

#: The usual CIFAR-10 training-set statistics (official files). The JPEG-derived copy in
#: ``../shared/data/cifar10`` matches the means to 1e-4 and the stds to about 1e-3.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel.

    Args:
        mean, std: one value per channel.

    Shape:
        - Input: :math:`(B, C, H, W)` in [0, 1] pixel space.
        - Output: same shape.

    Examples:
        >>> Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(torch.ones(2, 3, 4, 4)).unique()
        tensor([1.])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"Normalize: mean {tuple(mean)} and std {tuple(std)} differ in length")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: every std must be positive, got {tuple(std)}")
        # Buffers so that .to(device) carries them; not persistent: they are config, not state.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
