"""Attacks (PGD, Square) and gradient-masking checks on a tiny model.

PGD is checked against a float64 loop with the cross-entropy gradient of a linear model written
out by hand; Square by its contract: the eps-ball and the image range, determinism under a seed
without the global RNG, and that it does lower a trained model's accuracy. (Both gave the same
images as torchattacks 3.5.1 when they replaced it, a one-off check: it is no longer installed.)
"""

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
from ssimlayer.robustness.attacks import _square_fraction


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


def pgd_reference(weight, bias, x, y, eps, steps, alpha, start):
    """PGD on ``logits = x W^T + b`` in float64, with the input gradient of the summed
    cross-entropy written out: ``(softmax(logits) - onehot(y)) W`` (same sign as the mean's)."""
    x, start = x.double().flatten(1), start.double().flatten(1)
    adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        logits = adv @ weight.T + bias
        p = logits.softmax(dim=1)
        p[torch.arange(len(y)), y] -= 1
        adv = adv + alpha * (p @ weight).sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1)
    return adv


def test_pgd_matches_a_float64_reference_loop(batch):
    x, y = batch[0].double(), batch[1] % 3
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).double()
    w, b = model[1].weight.detach(), model[1].bias.detach()
    eps, steps, alpha, seed = 0.03, 7, 0.01, 5
    # the random start: the draw pgd makes, from a generator of its own seed
    start = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(seed))
    expected = pgd_reference(w, b, x, y, eps, steps, alpha, start)
    got = pgd(model, x, y, eps, steps=steps, alpha=alpha, seed=seed)
    torch.testing.assert_close(got.flatten(1), expected, rtol=0, atol=1e-12)
    no_start = pgd(model, x, y, eps, steps=steps, alpha=alpha, random_start=False)
    expected = pgd_reference(w, b, x, y, eps, steps, alpha, torch.zeros_like(x))
    torch.testing.assert_close(no_start.flatten(1), expected, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear classifier, 100% accurate on held-out images whose class is the channel made
    brighter by 0.1: robust to nothing much larger than that. Trained once; do not modify."""
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = torch.rand(n, 3, 8, 8, generator=g) * 0.9, torch.randint(0, 3, (n,), generator=g)
        x[torch.arange(n), y] += 0.1
        return x, y

    (xt, yt), (xv, yv) = images(600), images(60)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval(), xv, yv


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_square_stays_in_the_eps_ball_and_the_image_range(eps, trained):
    model, x, y = trained
    x = x.clone()
    x[:, :, :2] = 0.0  # pixels at the range's ends, where the clamp matters
    x[:, :, -2:] = 1.0
    adv = square(model, x, y, eps, n_queries=30)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv != x).any()  # some images were fooled, so the bounds are tested
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_square_is_deterministic_under_a_seed_and_leaves_the_global_rng(trained):
    model, x, y = trained
    state = torch.get_rng_state()
    a, b = (square(model, x, y, 0.05, n_queries=30, seed=7) for _ in range(2))
    c = square(model, x, y, 0.05, n_queries=30, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_and_square_lower_the_accuracy_of_a_trained_model(trained):
    model, x, y = trained

    def accuracy(images: torch.Tensor) -> float:
        with torch.no_grad():
            return (model(images).argmax(dim=1) == y).float().mean().item()

    clean = accuracy(x)
    assert clean >= 0.9
    assert accuracy(pgd(model, x, y, 0.05, steps=10)) <= clean - 0.5
    assert accuracy(square(model, x, y, 0.05, n_queries=100)) <= clean - 0.3


def test_square_leaves_misclassified_images_unchanged(batch):
    x, y = batch
    model = tiny_model()
    with torch.no_grad():
        wrong = model(x).argmax(dim=1) != y
    assert wrong.any()
    adv = square(model, x, y, 0.1, n_queries=10)
    assert torch.equal(adv[wrong], x[wrong])


def test_square_schedule_halves_p_as_in_the_paper():
    # Andriushchenko et al. 2020 (App. of the L-inf attack), for 10,000 iterations
    got = [_square_fraction(0.8, it, 10_000) for it in (0, 10, 11, 50, 51, 8000, 8001)]
    assert got == [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512]
    assert _square_fraction(0.8, 50, 1000) == 0.8 / 8  # as iteration 500 of 10,000


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
    specs = default_specs(eps=[0.0, 0.002, 0.004, 0.007, 0.01, 0.02, 8 / 255])
    got = {(s.attack, s.steps) for s in specs}
    assert {("fgsm", 1), ("pgd", 10), ("pgd", 50), ("square", 1000), ("clean", 0)} <= got
    # every eps of the list but 0 (the clean row)
    assert {s.eps for s in specs if s.attack == "pgd" and s.steps == 50} == {
        0.002,
        0.004,
        0.007,
        0.01,
        0.02,
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
