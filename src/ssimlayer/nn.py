"""``SSIMConv2d``: the SSIMLayer as a module that mirrors ``torch.nn.Conv2d``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ssimlayer.functional import DEFAULT_C1, DEFAULT_C2, ssim_conv2d

__all__ = ["SSIMConv2d", "INITS"]

#: Filter initialisations. §3.1: "In order to converge, the SSIM weights are initialised from a
#: standard normal distribution with zero mean and unit variance" -- hence the default.
INITS = ("normal", "kaiming_uniform", "xavier_normal", "uniform")


class SSIMConv2d(nn.Module):
    r"""The SSIMLayer (§2): a convolution whose output is the SSIM between each patch and each filter.

    A drop-in replacement for :class:`torch.nn.Conv2d` with the same constructor arguments and output
    shape. Each output value is Eq. 8 (by default) between the receptive field and the filter; see
    :func:`ssimlayer.functional.ssim_conv2d` for the formula, the constants and the general Eq. 1.

    .. math::
        \mathrm{out}(b, k, i, j) = \frac{(2\mu_x\mu_{y_k} + C_1)(2\sigma_{xy_k} + C_2)}
            {(\mu_x^2 + \mu_{y_k}^2 + C_1)(\sigma_x^2 + \sigma_{y_k}^2 + C_2)}

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as ``nn.Conv2d``.
        bias: add a learnable bias to the similarity. Default ``False``: the paper's layer has none
            (its output is already a bounded score in [-1, 1]).
        c1, c2: stabilising constants of Eq. 8 (defaults ``1e-4`` and ``9e-4``; see
            :data:`ssimlayer.functional.DEFAULT_C1` for why).
        alpha, beta, gamma, c3: exponents and structure constant of the general Eq. 1; the defaults
            (1, 1, 1, ``c2 / 2``) give Eq. 8 and its analytic backward.
        init: filter initialisation, one of :data:`INITS`. ``"normal"`` (default) is the standard
            normal of §3.1; the others are offered for ablations.
        init_std: standard deviation of the ``"normal"`` init, ``> 0`` (default ``1.0``, §3.1).
            Smaller values match the filters to the scale of the patches they are compared with
            (issue 28: N(0, 1) filters are about 7x wider than ReLU-ed feature patches). Ignored
            by the other inits.
        device, dtype: factory arguments, as ``nn.Conv2d``.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` or :math:`(C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, H_{out}, W_{out})` as ``nn.Conv2d``, values in [-1, 1]
          (plus bias, if any).

    Examples:
        >>> layer = SSIMConv2d(3, 16, kernel_size=7, padding=3)
        >>> layer(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4, 16, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = False,
        c1: float = DEFAULT_C1,
        c2: float = DEFAULT_C2,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        c3: float | None = None,
        init: str = "normal",
        init_std: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"SSIMConv2d: in_channels={in_channels} and out_channels={out_channels} must both be "
                f"divisible by groups={groups}"
            )
        if init not in INITS:
            raise ValueError(f"SSIMConv2d: unknown init {init!r}; choose one of {INITS}")
        if not init_std > 0:
            raise ValueError(f"SSIMConv2d: init_std must be > 0, got {init_std!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.c1, self.c2, self.c3 = c1, c2, c3
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.init, self.init_std = init, init_std
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # §3.1: standard normal (zero mean, unit variance) is what the paper needed to converge;
        # init_std != 1 is an ablation (issue 28).
        if self.init == "normal":
            nn.init.normal_(self.weight, 0.0, self.init_std)
        elif self.init == "kaiming_uniform":
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        elif self.init == "xavier_normal":
            nn.init.xavier_normal_(self.weight)
        else:
            nn.init.uniform_(self.weight, -1.0, 1.0)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return ssim_conv2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            c1=self.c1,
            c2=self.c2,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            c3=self.c3,
        )

    def extra_repr(self) -> str:
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding not in ((0, 0), "valid"):
            s += ", padding={padding}"
        if self.dilation != (1, 1):
            s += ", dilation={dilation}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is not None:
            s += ", bias=True"
        for name, default in (
            ("c1", DEFAULT_C1),
            ("c2", DEFAULT_C2),
            ("alpha", 1.0),
            ("beta", 1.0),
            ("gamma", 1.0),
            ("c3", None),
            ("init", "normal"),
            ("init_std", 1.0),
        ):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s.format(**self.__dict__)
