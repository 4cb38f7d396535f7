"""Attacks (torchattacks PGD/Square wrappers) and gradient-masking checks on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssimlayer import SSIMConv2d
from ssimlayer.robustness import (
    AttackSpec,
    default_specs,
    masking_checks,
    pgd,
    robustness_sweep,
    run_attack,
    square,
)


def tiny_model(ssim: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = SSIMConv2d(3, 4, 3, padding=1) if ssim else nn.Conv2d(3, 4, 3, padding=1)
    return nn.Sequential(layer, nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)


@pytest.mark.parametrize("ssim", [False, True])
@pytest.mark.parametrize(
    "spec",
    [AttackSpec("fgsm", 0.03, 1), AttackSpec("pgd", 0.03, 5), AttackSpec("square", 0.03, 20)],
)
def test_attack_linf_bound_and_range(spec, ssim, batch):
    x, y = batch
    adv = run_attack(tiny_model(ssim), spec, x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= spec.eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_changes_the_image(batch):
    x, y = batch
    assert (pgd(tiny_model(), x, y, 0.03, steps=3) - x).abs().max() > 0.01


def test_pgd_eps_zero_is_clean_accuracy(batch):
    x, y = batch
    models = {"m": tiny_model()}
    rows = robustness_sweep(
        models, [(x, y)], [AttackSpec("clean", 0.0, 0), AttackSpec("pgd", 0.0, 5)], progress=False
    )["m"]
    assert rows[1]["attack"] == "pgd" and rows[1]["top1"] == rows[0]["top1"]
    assert rows[1]["top5"] == rows[0]["top5"]
    assert torch.equal(pgd(models["m"], x, y, 0.0, steps=3), x)


def test_attacks_restore_training_mode_and_global_rng(batch):
    x, y = batch
    model = tiny_model().train()
    state = torch.get_rng_state()
    pgd(model, x, y, 0.01, steps=2)
    square(model, x, y, 0.01, n_queries=5, seed=123)
    assert model.training
    assert torch.equal(torch.get_rng_state(), state)


def test_pgd_is_reproducible_with_seed(batch):
    x, y = batch
    model = tiny_model()
    assert torch.equal(
        pgd(model, x, y, 0.02, steps=2, seed=1), pgd(model, x, y, 0.02, steps=2, seed=1)
    )


@pytest.mark.parametrize("eps", [-0.1, float("nan"), "0.1"])
def test_bad_eps_raises_naming_value(eps):
    with pytest.raises(ValueError, match=str(eps) if eps != "0.1" else "'0.1'"):
        AttackSpec("pgd", eps, 10)


def test_unknown_attack_raises():
    with pytest.raises(ValueError, match="'cw'"):
        AttackSpec("cw", 0.01, 10)


def test_sweep_pair_has_transfer_rows_and_counts(batch):
    x, y = batch
    specs = [AttackSpec("clean", 0.0, 0), AttackSpec("pgd", 0.03, 3, transfer=True)]
    out = robustness_sweep(
        {"plain": tiny_model(), "ssim": tiny_model(ssim=True)},
        [(x[:4], y[:4]), (x[4:], y[4:])],
        specs,
        num_examples=5,
        progress=False,
    )
    for rows in out.values():
        assert [r["attack"] for r in rows] == ["clean", "pgd", "pgd_transfer"]
        assert all(r["n"] == 5 for r in rows)
        assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in rows)
        # accuracies are counts over 5 images
        assert all(math.isclose(r["top1"] * 5, round(r["top1"] * 5)) for r in rows)


def test_default_specs_cover_the_issue():
    specs = default_specs()
    got = {(s.attack, s.steps) for s in specs}
    assert {("fgsm", 1), ("pgd", 10), ("pgd", 50), ("square", 1000), ("clean", 0)} <= got
    assert {s.eps for s in specs if s.attack == "pgd" and s.steps == 50} == {
        0.002,
        0.004,
        0.007,
        0.01,
        8 / 255,
    }
    assert max(s.eps for s in specs if s.attack == "pgd") == 0.1
    assert all(
        s.transfer == (s.attack == "pgd" and s.steps == 10) for s in specs if s.eps <= 8 / 255
    )


def _rows(**top1):
    """rows from keyword names like pgd_10_0.01=0.3."""
    out = []
    for key, v in top1.items():
        attack, steps, eps = key.rsplit("_", 2)
        out.append(
            {"attack": attack, "steps": int(steps), "eps": float(eps.replace("p", ".")), "top1": v}
        )
    return out


def test_masking_checks_pass_on_consistent_rows():
    rows = [{"attack": "clean", "eps": 0.0, "steps": 0, "top1": 0.8}]
    for e, f, p10, p50, sq, tr in [
        (0.01, 0.5, 0.3, 0.25, 0.6, 0.55),
        (0.03, 0.2, 0.05, 0.03, 0.4, 0.3),
    ]:
        rows += [
            {"attack": "fgsm", "eps": e, "steps": 1, "top1": f},
            {"attack": "pgd", "eps": e, "steps": 10, "top1": p10},
            {"attack": "pgd", "eps": e, "steps": 50, "top1": p50},
            {"attack": "square", "eps": e, "steps": 100, "top1": sq},
            {"attack": "pgd_transfer", "eps": e, "steps": 10, "top1": tr},
        ]
    rows.append({"attack": "pgd", "eps": 0.1, "steps": 10, "top1": 0.0})
    checks = masking_checks(rows)
    assert {c["verdict"] for c in checks.values()} == {"pass"}
    assert all(c["details"] for c in checks.values())


def test_masking_checks_flag_masking_signs():
    rows = [
        {"attack": "clean", "eps": 0.0, "steps": 0, "top1": 0.8},
        {"attack": "fgsm", "eps": 0.03, "steps": 1, "top1": 0.2},
        {"attack": "pgd", "eps": 0.03, "steps": 10, "top1": 0.4},  # PGD weaker than FGSM
        {"attack": "pgd", "eps": 0.03, "steps": 50, "top1": 0.5},  # more steps weaker
        {"attack": "square", "eps": 0.03, "steps": 100, "top1": 0.1},  # black-box wins
        {"attack": "pgd_transfer", "eps": 0.03, "steps": 10, "top1": 0.1},  # transfer wins
        {"attack": "pgd", "eps": 0.1, "steps": 10, "top1": 0.6},
    ]  # does not fall to 0
    checks = masking_checks(rows)
    assert {k: c["verdict"] for k, c in checks.items()} == dict.fromkeys(checks, "fail")


def test_masking_checks_skip_without_rows():
    checks = masking_checks([{"attack": "clean", "eps": 0.0, "steps": 0, "top1": 0.8}])
    assert {c["verdict"] for c in checks.values()} == {"skipped"}
