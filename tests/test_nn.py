"""SSIMConv2d: a Conv2d-shaped module around ssim_conv2d."""

import pytest
import torch
from torch import nn

from ssimlayer import SSIMConv2d, ssim_conv2d
from ssimlayer.nn import INITS


def test_module_equals_function():
    layer = SSIMConv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=True, c1=0.01)
    nn.init.uniform_(layer.bias)
    x = torch.randn(3, 4, 9, 9)
    expected = ssim_conv2d(x, layer.weight, layer.bias, 2, 1, 1, 2, c1=0.01)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=(3, 5), stride=2, padding=(1, 2)),
        dict(kernel_size=3, dilation=2, padding=2, groups=2),
        dict(kernel_size=4, padding="same"),
    ],
)
def test_output_shape_matches_conv2d(kwargs):
    x = torch.randn(2, 4, 11, 10)
    assert SSIMConv2d(4, 8, **kwargs)(x).shape == nn.Conv2d(4, 8, **kwargs)(x).shape


def test_default_init_is_standard_normal():
    torch.manual_seed(0)
    w = SSIMConv2d(64, 128, 3).weight
    assert w.shape == (128, 64, 3, 3)
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1.0) < 0.01


def test_init_std_scales_the_normal_init():
    torch.manual_seed(0)
    layer = SSIMConv2d(64, 128, 3, init_std=0.1)
    assert abs(layer.weight.std().item() - 0.1) < 0.002
    assert set(layer.state_dict()) == {"weight"}
    assert "init_std=0.1" in repr(layer)
    assert "init_std" not in repr(SSIMConv2d(3, 8, 3))


@pytest.mark.parametrize("init_std", [0.0, -1.0])
def test_non_positive_init_std_raises(init_std):
    with pytest.raises(ValueError, match=f"init_std must be > 0, got {init_std}"):
        SSIMConv2d(3, 8, 3, init_std=init_std)


@pytest.mark.parametrize("init", INITS)
def test_every_init_gives_finite_weights(init):
    layer = SSIMConv2d(3, 8, 3, init=init)
    assert torch.isfinite(layer.weight).all() and layer.weight.std() > 0


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="unknown init 'he'"):
        SSIMConv2d(3, 8, 3, init="he")


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="divisible by groups=2"):
        SSIMConv2d(3, 8, 3, groups=2)


def test_state_dict_round_trip():
    a = SSIMConv2d(3, 8, 5, padding=2, bias=True)
    b = SSIMConv2d(3, 8, 5, padding=2, bias=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert set(a.state_dict()) == {"weight", "bias"}


def test_extra_repr_shows_only_non_defaults():
    assert repr(SSIMConv2d(3, 8, 3)) == "SSIMConv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))"
    text = repr(
        SSIMConv2d(4, 8, 3, padding=1, groups=2, bias=True, c1=0.5, gamma=2.0, init="uniform")
    )
    for part in (
        "padding=(1, 1)",
        "groups=2",
        "bias=True",
        "c1=0.5",
        "gamma=2.0",
        "init='uniform'",
    ):
        assert part in text
    assert "c2" not in text and "dilation" not in text


def test_factory_kwargs():
    layer = SSIMConv2d(3, 4, 3, dtype=torch.float64, device="cpu")
    assert layer.weight.dtype == torch.float64
    assert layer(torch.randn(1, 3, 5, 5, dtype=torch.float64)).dtype == torch.float64


def test_trains_towards_a_target_pattern():
    # Gradient descent on the filter must raise its SSIM with a fixed patch (§2.2).
    torch.manual_seed(0)
    patch = torch.randn(1, 3, 5, 5)
    layer = SSIMConv2d(3, 1, 5)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    start = layer(patch).item()
    for _ in range(200):
        opt.zero_grad()
        (1 - layer(patch)).sum().backward()
        opt.step()
    assert layer(patch).item() > max(0.95, start)


def test_in_a_model_backward_reaches_every_parameter():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        SSIMConv2d(8, 16, 3, padding=1),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )
    loss = nn.functional.cross_entropy(model(torch.rand(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
