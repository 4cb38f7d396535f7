"""FGSM (Eq. 20) and the sweep of Fig. 9 on a tiny model."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssimlayer import SSIMConv2d
from ssimlayer.models import ConvNet
from ssimlayer.robustness import fgsm, fgsm_sweep

ATOL = 1e-6  # float32 rounding of x + eps
LEVELS = [0.0, 0.002, 0.004, 0.007, 0.01, 0.02, 8 / 255]  # as conf/fgsm/paper.yaml


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ConvNet(
        [nn.Conv2d, SSIMConv2d],
        widths=[4, 4],
        kernel_sizes=[3, 3],
        paddings=[1, 1],
        relu=[True, True],
        pools=[2, 2],
        input_size=16,
    )


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.002, 0.007, 8 / 255, 0.5])
def test_fgsm_stays_within_eps_and_in_image_range(batch, eps):
    x, y = batch
    adv = fgsm(tiny_model(), x, y, eps)
    assert (adv - x).abs().max().item() <= eps + ATOL
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0


def test_fgsm_moves_pixels_by_eps_where_not_clipped(batch):
    x, y = batch
    eps = 0.01
    adv = fgsm(tiny_model(), x, y, eps)
    inside = (x > eps) & (x < 1 - eps)
    moved = (adv - x)[inside].abs()
    # every unclipped pixel moves by exactly eps, or by 0 where the gradient is exactly 0 (Eq. 21)
    assert torch.all((moved < 1e-7) | ((moved - eps).abs() < 1e-5))
    assert (moved > eps / 2).float().mean() > 0.5


def test_fgsm_increases_the_loss(batch):
    x, y = batch
    model = tiny_model()
    adv = fgsm(model, x, y, 0.03)
    with torch.no_grad():
        clean = nn.functional.cross_entropy(model(x), y)
        attacked = nn.functional.cross_entropy(model(adv), y)
    assert attacked > clean


def test_fgsm_restores_mode_and_leaves_parameter_grads_alone(batch):
    x, y = batch
    model = tiny_model().train()
    fgsm(model, x, y, 0.01)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_negative_or_nonfinite_eps_is_rejected_naming_the_value(batch, bad):
    x, y = batch
    with pytest.raises(ValueError, match=r"eps must be finite and >= 0.*" + str(bad)[:4]):
        fgsm(tiny_model(), x, y, bad)
    with pytest.raises(ValueError, match="eps"):
        fgsm_sweep(tiny_model(), [(x, y)], eps=[0.0, bad])


def test_fgsm_rejects_normalised_inputs(batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"\[0, 1\] images"):
        fgsm(tiny_model(), x - 0.5, y, 0.01)


def test_sweep_at_eps_zero_equals_clean_accuracy(batch):
    x, y = batch
    model = tiny_model()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    rows = fgsm_sweep(model, loader, eps=LEVELS, progress=False)
    with torch.no_grad():
        logits = model(x)
    clean_top1 = (logits.argmax(1) == y).float().mean().item()
    clean_top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean().item()
    assert [r["eps"] for r in rows] == LEVELS
    assert math.isclose(rows[0]["top1"], clean_top1, abs_tol=1e-6)
    assert math.isclose(rows[0]["top5"], clean_top5, abs_tol=1e-6)


def test_sweep_rows_match_single_fgsm_calls(batch):
    x, y = batch
    model = tiny_model()
    eps = 0.02
    rows = fgsm_sweep(model, [(x, y)], eps=[eps], progress=False)
    with torch.no_grad():
        top1 = (model(fgsm(model, x, y, eps)).argmax(1) == y).float().mean().item()
    assert math.isclose(rows[0]["top1"], top1, abs_tol=1e-6)


def test_sweep_max_batches_limits_the_work(batch):
    x, y = batch
    seen = []

    class Counting(list):
        def __iter__(self):
            for item in super().__iter__():
                seen.append(1)
                yield item

    fgsm_sweep(tiny_model(), Counting([(x, y)] * 5), eps=[0.0], max_batches=2, progress=False)
    assert len(seen) <= 3  # the third is fetched, then the loop stops
