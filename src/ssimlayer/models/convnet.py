"""A plain stack of conv-like stages and one linear output layer: every network of the paper.

Each stage is ``layer -> [ReLU] -> [MaxPool]``. The layer class is injected per stage (``nn.Conv2d``
or :class:`ssimlayer.SSIMConv2d`, usually as a ``functools.partial`` built by Hydra), so the Fig. 4,
§3.2 shallow and Fig. 7 networks differ only in their config (``conf/model/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ssimlayer.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize

__all__ = ["ConvNet"]


class ConvNet(nn.Module):
    """``Normalize -> [layer_i -> ReLU? -> MaxPool?] * n -> Flatten -> Linear``.

    Every per-stage argument is a sequence with one entry per stage (the length of ``layers``).

    Args:
        layers: per stage, a callable ``f(in_channels, out_channels, kernel_size, stride=, padding=)``
            returning a module, e.g. ``nn.Conv2d`` or ``SSIMConv2d``.
        widths: output channels per stage.
        kernel_sizes, strides, paddings: per stage, as ``nn.Conv2d``.
        relu: per stage, whether a ReLU follows the layer.
        pools: per stage, the MaxPool kernel (= stride); ``0`` or ``1`` for none.
        num_classes: outputs of the final linear layer.
        in_channels, input_size: input shape, used to size the linear layer.
        mean, std: normalisation applied first, so the model takes [0, 1] images.
        standardize: apply ``(x - mean) / std`` first (default, what every run so far did). The
            paper mentions normalisation only for ImageNet (§3.4.1); ``False`` keeps the [0, 1]
            images as they are (issue 28's ablation). The ``normalize`` module stays, as mean 0
            and std 1 (an exact identity), so packs and checkpoints see the same structure.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` in [0, 1] with ``H = W = input_size``.
        - Output: :math:`(B, \\text{num\\_classes})` logits.

    Examples:
        >>> net = ConvNet([nn.Conv2d, nn.Conv2d], widths=[4, 8], kernel_sizes=[5, 3],
        ...               paddings=[2, 1], relu=[True, True], pools=[2, 2])
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        layers: Sequence[Callable[..., nn.Module]],
        widths: Sequence[int],
        kernel_sizes: Sequence[int],
        paddings: Sequence[int],
        relu: Sequence[bool],
        pools: Sequence[int],
        strides: Sequence[int] | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        standardize: bool = True,
    ) -> None:
        super().__init__()
        n = len(layers)
        strides = [1] * n if strides is None else strides
        per_stage = {
            "widths": widths,
            "kernel_sizes": kernel_sizes,
            "strides": strides,
            "paddings": paddings,
            "relu": relu,
            "pools": pools,
        }
        for name, values in per_stage.items():
            if len(values) != n:
                raise ValueError(
                    f"ConvNet: {name} has {len(values)} entries but there are {n} layers; "
                    f"give one value per stage (got {name}={list(values)})"
                )
        if n == 0:
            raise ValueError("ConvNet: needs at least one stage (layers is empty)")

        if not standardize:
            mean, std = (0.0,) * len(mean), (1.0,) * len(std)
        self.normalize = Normalize(mean, std)
        stages: list[nn.Module] = []
        c = in_channels
        for make, w, k, s, p, r, pool in zip(
            layers, widths, kernel_sizes, strides, paddings, relu, pools, strict=True
        ):
            stage = [make(c, w, k, stride=s, padding=p)]
            if r:
                stage.append(nn.ReLU(inplace=False))
            if pool and pool > 1:
                stage.append(nn.MaxPool2d(pool))
            stages.append(nn.Sequential(*stage))
            c = w
        self.features = nn.Sequential(*stages)
        # Size the classifier from one dummy pass: no shape arithmetic to drift.
        with torch.no_grad():
            n_features = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(n_features, num_classes))

    @property
    def first_layer(self) -> nn.Module:
        """The first conv-like layer (the one whose kernels Fig. 6 shows)."""
        return self.features[0][0]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))
