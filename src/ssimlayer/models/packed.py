"""k networks of one architecture as one network of grouped layers ("packed", as Packed-Ensembles).

Member ``i``'s channels are the ``i``-th block of every feature map: each conv-like layer becomes
the same layer with ``groups`` times ``k`` and its members' weights concatenated along the output
channels, and the final linear layer a batched matrix product. A grouped convolution computes each
group from its own input channels only, so each member computes what it computes alone; its
gradients are its own, and an elementwise optimiser (SGD with momentum and weight decay) updates
each member's block as it would update that member alone. One forward and backward of the pack
replaces ``k``: at the paper's batch of 32 a single network does not fill a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssimlayer.models.convnet import ConvNet
from ssimlayer.nn import SSIMConv2d

__all__ = ["PackedConvNet"]

#: Modules that act on each channel alone: shared as they are.
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.Identity)


def _signature(net: ConvNet) -> list[tuple]:
    """What must agree between members: module types, their settings and parameter shapes."""
    return [
        (name, type(m).__name__, m.extra_repr(), [tuple(p.shape) for p in m.parameters(False)])
        for name, m in net.named_modules()
    ]


def _pack_layer(layers: Sequence[nn.Module]) -> nn.Module:
    """One grouped layer holding each member's layer as its own block of channels."""
    first, k = layers[0], len(layers)
    if isinstance(first, _CHANNELWISE):
        return copy.deepcopy(first)
    if type(first) is nn.Conv2d:
        own = {"padding_mode": first.padding_mode}
    elif type(first) is SSIMConv2d:
        own = {n: getattr(first, n) for n in ("c1", "c2", "alpha", "beta", "gamma", "c3", "init")}
    else:
        raise TypeError(
            f"PackedConvNet: cannot pack a {type(first).__name__}; it packs nn.Conv2d, SSIMConv2d, "
            f"ReLU and MaxPool2d stages"
        )
    # k members side by side: k times the channels and groups, the member's own settings
    packed = type(first)(
        k * first.in_channels,
        k * first.out_channels,
        first.kernel_size,
        stride=first.stride,
        padding=first.padding,
        dilation=first.dilation,
        groups=k * first.groups,
        bias=first.bias is not None,
        **own,
    )
    packed.to(first.weight.device, first.weight.dtype)
    with torch.no_grad():
        packed.weight.copy_(torch.cat([m.weight for m in layers]))  # (k C_out, C_in / g, kh, kw)
        if packed.bias is not None:
            packed.bias.copy_(torch.cat([m.bias for m in layers]))
    return packed


class PackedConvNet(nn.Module):
    """``k`` :class:`ConvNet` s of one architecture as one network; each keeps its own weights.

    Args:
        nets: the members, all built from the same config (their weights may differ).

    Shape:
        - Input: :math:`(B, k C_{in}, H, W)`: member ``i``'s images are channels
          ``i C_in .. (i + 1) C_in - 1``.
        - Output: :math:`(B, k, \\text{num\\_classes})`: member ``i``'s logits at ``[:, i]``.

    Examples:
        >>> nets = [ConvNet([nn.Conv2d], widths=[4], kernel_sizes=[3], paddings=[1],
        ...                 relu=[True], pools=[2]) for _ in range(3)]
        >>> packed = PackedConvNet(nets)
        >>> packed(torch.rand(2, 9, 32, 32)).shape
        torch.Size([2, 3, 10])
    """

    def __init__(self, nets: Sequence[ConvNet]) -> None:
        super().__init__()
        if not nets:
            raise ValueError("PackedConvNet: needs at least one network")
        ref = _signature(nets[0])
        for i, net in enumerate(nets[1:], 1):
            if _signature(net) != ref:
                raise ValueError(
                    f"PackedConvNet: network {i} differs from network 0 in its layers or shapes; "
                    f"only runs of one model config (seeds) can share a pack"
                )
        k = self.k = len(nets)
        self.register_buffer("mean", nets[0].normalize.mean.repeat(1, k, 1, 1), persistent=False)
        self.register_buffer("std", nets[0].normalize.std.repeat(1, k, 1, 1), persistent=False)
        self.features = nn.Sequential(
            *[
                nn.Sequential(*[_pack_layer(layers) for layers in zip(*stages, strict=True)])
                for stages in zip(*[net.features for net in nets], strict=True)
            ]
        )
        linears = [net.classifier[1] for net in nets]
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))  # (k, O, F)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]))  # (k, O)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features((x - self.mean) / self.std)  # (B, k C, h, w)
        h = h.reshape(len(h), self.k, -1)  # (B, k, C h w): each member's Flatten order
        return torch.einsum("bkf,kof->bko", h, self.weight) + self.bias  # (B, k, O)

    def member_tensor(self, name: str, tensor: Tensor, i: int) -> tuple[str, Tensor]:
        """Member ``i``'s block of the packed ``tensor`` stored under parameter ``name`` (a
        parameter, or a same-shaped optimiser state such as a momentum buffer), with the name
        it has in a :class:`ConvNet`."""
        if name in ("weight", "bias"):
            return f"classifier.1.{name}", tensor[i]
        return name, tensor.chunk(self.k)[i]

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s weights as a :class:`ConvNet` state dict (copies)."""
        pairs = (self.member_tensor(name, p.detach(), i) for name, p in self.named_parameters())
        return {name: t.clone() for name, t in pairs}

    def unpack_into(self, nets: Sequence[ConvNet]) -> None:
        """Copy each member's current weights into ``nets`` (one :class:`ConvNet` per member)."""
        if len(nets) != self.k:
            raise ValueError(
                f"PackedConvNet.unpack_into: {len(nets)} networks for {self.k} members"
            )
        for i, net in enumerate(nets):
            net.load_state_dict(self.member_state_dict(i))
