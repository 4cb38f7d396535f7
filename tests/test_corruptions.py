"""Fig. 1 corruptions at the CIFAR-10-C severities."""

from __future__ import annotations

import pytest
import torch

from ssimlayer.robustness import CORRUPTIONS, SEVERITIES, corrupt, corruption_sweep
from ssimlayer.robustness.corruptions import gaussian_blur

NAMES = sorted(CORRUPTIONS)


@pytest.fixture
def images() -> torch.Tensor:
    # smooth images, like natural ones: JPEG and blur barely touch them at low severity
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(4, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=32, mode="bilinear").clamp(0, 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [1, 5])
def test_shape_dtype_range(name, severity, images):
    out = corrupt(images, name, severity, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)


@pytest.mark.parametrize("name", NAMES)
def test_lowest_severity_close_to_clean(name, images):
    out = corrupt(images, name, 1, generator=torch.Generator().manual_seed(1))
    # severity 1 is mild: under 10 grey levels on average (Gaussian sigma 0.04 gives ~0.032)
    assert (out - images).abs().mean() < 0.04


@pytest.mark.parametrize(
    "name",
    ["gaussian_noise", "speckle_noise", "shot_noise", "salt_and_pepper", "gaussian_blur", "jpeg"],
)
def test_severity_increases_distortion(name, images):
    err = [
        (corrupt(images, name, s, generator=torch.Generator().manual_seed(1)) - images).abs().mean()
        for s in (1, 5)
    ]
    assert err[1] > err[0]


def test_cifar10c_constants():
    assert SEVERITIES["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert SEVERITIES["jpeg"] == (80, 65, 58, 50, 40)
    assert all(len(v) == 5 for v in SEVERITIES.values())


def test_gaussian_noise_std_matches_sigma():
    x = torch.full((2, 3, 64, 64), 0.5)
    out = corrupt(x, "gaussian_noise", 5, generator=torch.Generator().manual_seed(0))
    assert abs((out - x).std().item() - 0.10) < 0.005


def test_salt_and_pepper_fraction():
    x = torch.full((2, 3, 64, 64), 128 / 255)  # an 8-bit value, so quantisation leaves it alone
    out = corrupt(x, "salt_and_pepper", 5, generator=torch.Generator().manual_seed(0))
    changed = (out != x).float().mean().item()
    assert abs(changed - 0.07) < 0.01
    assert set(out[out != x].unique().tolist()) <= {0.0, 1.0}


def test_gaussian_blur_keeps_constant_image():
    x = torch.full((1, 3, 8, 8), 0.4)
    assert torch.allclose(gaussian_blur(x, 1.0), x, atol=1 / 255)


def test_same_seed_same_noise(images):
    a = corrupt(images, "shot_noise", 3, generator=torch.Generator().manual_seed(7))
    b = corrupt(images, "shot_noise", 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_bad_name_and_severity_raise(images):
    with pytest.raises(ValueError, match="'fog'"):
        corrupt(images, "fog", 1)
    with pytest.raises(ValueError, match="6"):
        corrupt(images, "jpeg", 6)


def test_sweep_rows_and_mean(images):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    y = torch.arange(4)
    rows = corruption_sweep(model, [(images, y)], ["jpeg", "gaussian_blur"], [1, 2], progress=False)
    assert [(r["corruption"], r["severity"]) for r in rows] == [
        ("clean", 0),
        ("jpeg", 1),
        ("jpeg", 2),
        ("gaussian_blur", 1),
        ("gaussian_blur", 2),
        ("mean", ""),
    ]
    assert rows[-1]["top1"] == pytest.approx(sum(r["top1"] for r in rows[1:-1]) / 4)
