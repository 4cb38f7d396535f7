"""The compiled elementwise path computes what the eager definition computes."""

import pytest
import torch

from ssimlayer import _fusion, ssim_conv2d


def _forward_backward(x, w, input_grad=True, **geom):
    x = x.clone().requires_grad_(input_grad)
    w = w.clone().requires_grad_()
    out = ssim_conv2d(x, w, **geom)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad if input_grad else out.new_zeros(()), w.grad


@pytest.mark.parametrize(
    "geom",
    [
        dict(padding=1),  # expanding: Sxy recomputed in backward
        dict(stride=2, padding=1, groups=2),  # Sxy saved
        dict(stride=2, padding=1, groups=2, input_grad=False),  # a first layer: filters only
    ],
)
def test_fused_equals_eager(geom):
    torch.manual_seed(0)
    x = torch.randn(16, 4, 32, 32) * 3 + 1
    w = torch.randn(16, 4 // geom.get("groups", 1), 3, 3)
    assert x.numel() >= _fusion.MIN_NUMEL  # large enough to take the compiled path
    _fusion.set_fusion(False)
    try:
        eager = _forward_backward(x, w, **geom)
    finally:
        _fusion.set_fusion(True)
    fused = _forward_backward(x, w, **geom)
    assert _fusion.fusion_enabled(), "the compiled path failed and fell back to eager"
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fusion_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(_fusion, "_compiled", {})
    x, w = torch.randn(16, 4, 32, 32), torch.randn(16, 4, 3, 3)
    _fusion.set_fusion(False)
    expected = ssim_conv2d(x, w, padding=1)
    _fusion.set_fusion(True)
    try:
        with pytest.warns(RuntimeWarning, match="no compiler here"):
            out = ssim_conv2d(x, w, padding=1)
        assert not _fusion.fusion_enabled()
    finally:
        _fusion.set_fusion(True)
    torch.testing.assert_close(out, expected)
