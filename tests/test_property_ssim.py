"""Property-based tests of ``ssim_conv2d`` (hypothesis) and its numerical safety.

Over random shapes, arguments and values, ``ssim_conv2d`` either returns a finite tensor of
``conv2d``'s output shape with Eq. 8 values in [-1, 1], or raises a ``ValueError``/``TypeError``
that starts with ``ssim_conv2d:``. The default run tries 50 examples (profile ``fast``);
``make check`` runs the ``thorough`` profile (``HYPOTHESIS_PROFILE=thorough``, 1000 examples).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssimlayer import SSIMConv2d, ssim_conv2d

settings.register_profile(
    "fast", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
#: Applied per test (not loaded globally): ``HYPOTHESIS_PROFILE=thorough`` for ``make check``.
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

#: How input values are drawn: ordinary, constant (zero variance), zero, tiny, and up to 1e4.
VALUES = ["normal", "constant", "zero", "tiny", "huge", "image"]


def _values(kind: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, generator=g)
    if kind == "constant":
        return torch.full(shape, 0.37)
    if kind == "zero":
        return torch.zeros(shape)
    if kind == "tiny":
        return 1e-6 * torch.randn(shape, generator=g)
    if kind == "huge":
        return 1e4 * torch.rand(shape, generator=g)
    return torch.rand(shape, generator=g)  # [0, 1] images


@st.composite
def conv_args(draw):
    batch = draw(st.integers(0, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = draw(st.integers(1, 3)) * (groups if draw(st.booleans()) else 1)
    c_out = draw(st.integers(1, 3)) * groups
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    stride = draw(st.sampled_from([1, 2, 3, (1, 2)]))
    dilation = draw(st.sampled_from([1, 2, (2, 1)]))
    padding = draw(st.sampled_from([0, 1, 2, (1, 0), "valid", "same"]))
    c_w = c_in // groups if c_in % groups == 0 else max(1, c_in // groups)
    return {
        "input_shape": (batch, c_in, h, w),
        "weight_shape": (c_out, c_w, kh, kw),
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "x_kind": draw(st.sampled_from(VALUES)),
        "w_kind": draw(st.sampled_from(VALUES)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(PROFILE)
@given(conv_args())
def test_ssim_conv2d_is_finite_with_conv2d_shape_or_a_clear_error(args):
    g = torch.Generator().manual_seed(args["seed"])
    x = _values(args["x_kind"], args["input_shape"], g)
    w = _values(args["w_kind"], args["weight_shape"], g)
    kw = {k: args[k] for k in ("stride", "padding", "dilation", "groups")}
    try:
        expected = F.conv2d(x, w, **kw).shape
    except RuntimeError:
        expected = None  # conv2d rejects these arguments: ssim_conv2d must too, clearly
    try:
        out = ssim_conv2d(x, w, **kw)
    except (ValueError, TypeError) as e:
        assert str(e).startswith("ssim_conv2d:"), e
        if expected is not None:  # conv2d accepts it; the only extra rule is N >= 2 (Eqs. 5, 7)
            assert "N >= 2" in str(e), e
        return
    assert expected is not None, f"conv2d rejects {args} but ssim_conv2d returned"
    assert out.shape == expected
    assert torch.isfinite(out).all()
    assert out.abs().max().item() <= 1 + 1e-4 if out.numel() else True  # Eq. 8 is in [-1, 1]


@settings(PROFILE)
@given(st.integers(0, 2**31 - 1), st.sampled_from(VALUES), st.sampled_from([1, 2]))
def test_gradients_are_finite(seed, kind, groups):
    g = torch.Generator().manual_seed(seed)
    x = _values(kind, (2, 2 * groups, 6, 6), g).requires_grad_(True)
    w = torch.randn(2 * groups, 2, 3, 3, generator=g, requires_grad=True)
    ssim_conv2d(x, w, padding=1, groups=groups).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_layer_is_finite_under_autocast_and_large_inputs(dtype, scale):
    torch.manual_seed(0)
    layer = SSIMConv2d(3, 4, 3, padding=1)
    x = (scale * torch.rand(2, 3, 8, 8)).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x)
    assert torch.isfinite(out).all(), f"{dtype} at scale {scale}"
    assert out.float().abs().max() <= 1 + 1e-2
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()
