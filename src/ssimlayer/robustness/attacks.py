"""White- and black-box L-inf attacks beyond the paper's FGSM, for [0, 1] images.

PGD (Madry et al. 2018, random start) and Square (Andriushchenko et al. 2020, score-based, no
gradients) are written here, following torchattacks 3.5.1 / AutoAttack, which the project no longer
installs (its ``requests~=2.25.1`` pin, see ``docs/dependencies.md``); FGSM is the paper's
(:func:`ssimlayer.robustness.fgsm.fgsm`, Eq. 20). Every function runs the model in eval mode,
leaves it in the mode it was given in, and draws its randomness from a generator of its own
seed, so the global RNG is untouched.

A sweep evaluates a list of :class:`AttackSpec` on a pair of models batch by batch, and feeds the
white-box PGD examples of each model to the other one (the transfer check of ``masking.py``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssimlayer.robustness.accuracy import topk_correct
from ssimlayer.robustness.fgsm import (
    _check_images,
    _eval_mode,
    check_eps,
    fgsm,
    input_gradient_sign,
)

__all__ = ["AttackSpec", "default_specs", "pgd", "square", "run_attack", "robustness_sweep"]

ATTACKS = ("clean", "fgsm", "pgd", "square")


@dataclass(frozen=True)
class AttackSpec:
    """One row of ``robustness.csv``: ``attack`` at ``eps`` with ``steps``.

    ``steps`` is 1 for FGSM, the iteration count for PGD, the query budget (forward passes per
    image) for Square, 0 for ``clean``. ``transfer``: also feed the examples crafted on each model
    to the other model of the pair (reported as ``<attack>_transfer``).
    """

    attack: str
    eps: float
    steps: int
    transfer: bool = False

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"AttackSpec: unknown attack {self.attack!r}; choose from {ATTACKS}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)):
            raise ValueError(
                f"AttackSpec: eps must be a number in [0, 1] pixel units, got {self.eps!r}"
            )
        check_eps(self.eps)
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"AttackSpec: steps must be an int >= 0, got {self.steps!r}")


def default_specs(
    eps: Sequence[float],
    pgd_steps: Sequence[int] = (10, 50),
    square_eps: Sequence[float] = (0.007, 8 / 255),
    square_queries: int = 1000,
    large_eps: Sequence[float] = (0.05, 0.1),
    transfer_steps: int | None = 10,
) -> list[AttackSpec]:
    """Clean, FGSM and PGD at every ``eps > 0``, Square at ``square_eps``, PGD-``min(pgd_steps)``
    at ``large_eps`` (for the "accuracy falls to 0" check); PGD-``transfer_steps`` also transferred."""
    eps, square_eps, large_eps = check_eps(eps), check_eps(square_eps), check_eps(large_eps)
    eps = [e for e in eps if e > 0]  # eps 0 is the clean row
    specs = [AttackSpec("clean", 0.0, 0)]
    specs += [AttackSpec("fgsm", e, 1) for e in eps]
    specs += [AttackSpec("pgd", e, s, transfer=s == transfer_steps) for s in pgd_steps for e in eps]
    specs += [AttackSpec("square", e, square_queries) for e in square_eps]
    if pgd_steps:
        specs += [AttackSpec("pgd", e, min(pgd_steps)) for e in large_eps if e not in eps]
    return specs


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 10,
    alpha: float | None = None,
    random_start: bool = True,
    seed: int = 0,
) -> Tensor:
    r"""PGD-L-inf on cross-entropy: from a uniform random start in the eps-ball, ``steps``
    signed-gradient steps of size ``alpha`` (default ``2.5 eps / steps``, Madry et al.), each
    projected onto the eps-ball and [0, 1].

    .. math::
        x^{t+1} = \mathrm{clip}_{[0, 1]}\big(x + \mathrm{clip}_{[-\epsilon, \epsilon]}(x^t +
        \alpha \, \mathrm{sign}(\nabla_x J(\theta, x^t, y)) - x)\big)

    Examples:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> x, y = torch.rand(2, 3, 2, 2), torch.tensor([0, 2])
        >>> bool((pgd(model, x, y, 0.01, steps=3) - x).abs().max() <= 0.01 + 1e-6)
        True
    """
    (eps,) = check_eps(eps)
    if steps < 1:
        raise ValueError(f"pgd: steps must be >= 1, got {steps!r}")
    _check_images(x)
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x = x.detach()
    adv = x.clone()
    if random_start:
        g = torch.Generator(device=x.device).manual_seed(seed)
        adv = (adv + torch.empty_like(x).uniform_(-eps, eps, generator=g)).clamp(0.0, 1.0)
    for _ in range(steps):
        adv = adv + alpha * input_gradient_sign(model, adv, y)
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return adv


#: Square's schedule of the window's area fraction ``p``, written for 10,000 iterations and
#: stretched to the budget: ``p_init / d`` up to iteration ``i`` for each ``(i, d)``, then ``/ 512``.
_SQUARE_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64))
_SQUARE_SCHEDULE += ((6000, 128), (8000, 256))


def _square_fraction(p_init: float, it: int, n_queries: int) -> float:
    it = int(it / n_queries * 10000)
    return p_init / next((d for i, d in _SQUARE_SCHEDULE if it <= i), 512)


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit: ``<= 0`` means misclassified."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return true - others


@torch.no_grad()
def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    n_queries: int = 1000,
    p_init: float = 0.8,
    seed: int = 0,
) -> Tensor:
    """Square attack, L-inf, margin loss, one restart: score-based random search, no gradients.

    The images the model classifies correctly start from vertical stripes of ``+-eps``; each of
    ``n_queries`` iterations sets one random ``s x s`` window (``s^2`` the fraction ``p`` of the
    image, :func:`_square_fraction`) to ``x +- eps`` per channel in every image not yet
    misclassified, and keeps it where the margin drops. As AutoAttack's PyTorch code
    (Andriushchenko et al.'s) and torchattacks 3.5.1, which the earlier ``robustness.csv`` files
    used, the window is shared by the batch and the draws come from a CPU generator in the same
    order: with the same seed the images are those torchattacks gave. Images not misclassified in
    the end (and those misclassified from the start) are returned unchanged.
    """
    (eps,) = check_eps(eps)
    if n_queries < 1:
        raise ValueError(f"square: n_queries must be >= 1, got {n_queries!r}")
    _check_images(x)
    x = x.detach()
    if eps == 0:
        return x.clone()
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=g).to(x.device)

    with _eval_mode(model):
        todo = (model(x).argmax(dim=1) == y).nonzero()[:, 0]  # only correct images are attacked
        x0, y0 = x[todo], y[todo]
        n, c, h, w = x0.shape
        best = (x0 + eps * torch.sign(2 * rand(n, c, 1, w) - 1)).clamp(0.0, 1.0)
        margin = _margin(model(best), y0)
        for it in range(n_queries):
            live = (margin > 0).nonzero()[:, 0]
            if live.numel() == 0:
                break
            s = round(math.sqrt(_square_fraction(p_init, it, n_queries) * h * w))
            s = min(max(s, 1), h, w)
            top, left = (int((size - s) * rand(1)) for size in (h, w))
            delta = torch.zeros(c, h, w, device=x.device, dtype=x.dtype)
            delta[:, top : top + s, left : left + s] = 2 * eps * torch.sign(2 * rand(c, 1, 1) - 1)
            x_live = x0[live]
            new = torch.minimum(torch.maximum(best[live] + delta, x_live - eps), x_live + eps)
            new = new.clamp(0.0, 1.0)
            new_margin = _margin(model(new), y0[live])  # (m,)
            better = new_margin < margin[live]
            margin[live] = torch.where(better, new_margin, margin[live])
            best[live] = torch.where(better[:, None, None, None], new, best[live])
        fooled = model(best).argmax(dim=1) != y0
    adv = x.clone()
    adv[todo[fooled]] = best[fooled]
    return adv


def run_attack(model: nn.Module, spec: AttackSpec, x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
    """The adversarial images of ``spec`` for ``(x, y)``; ``x`` itself for ``clean``."""
    if spec.attack == "clean" or (spec.eps == 0 and spec.attack != "pgd"):
        return x
    if spec.attack == "fgsm":
        return fgsm(model, x, y, spec.eps)
    if spec.attack == "pgd":
        return pgd(model, x, y, spec.eps, steps=spec.steps, seed=seed)
    return square(model, x, y, spec.eps, n_queries=spec.steps, seed=seed)


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with _eval_mode(model):
        return model(x)


def _first(
    batches: Iterable[tuple[Tensor, Tensor]], num_examples: int | None, device: torch.device | str
) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches on ``device``, cut to the first ``num_examples`` images (``None``: all)."""
    seen = 0
    for x, y in batches:
        if num_examples is not None:
            if seen >= num_examples:
                return
            x, y = x[: num_examples - seen], y[: num_examples - seen]
        seen += len(y)
        yield x.to(device), y.to(device)


def _row(cols: Sequence[str], key: tuple, correct: Counter[int], n: int, num_classes: int) -> dict:
    """The row of ``key`` (its fields named by ``cols``), with ``top1``, ``top5`` (NaN under 5
    classes) and ``n`` from the counts of correct images."""
    top5 = correct[5] / n if num_classes >= 5 else math.nan
    return {**dict(zip(cols, key, strict=True)), "top1": correct[1] / n, "top5": top5, "n": n}


def robustness_sweep(
    models: Mapping[str, nn.Module],
    batches: Iterable[tuple[Tensor, Tensor]],
    specs: Sequence[AttackSpec],
    num_examples: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[dict[str, float | int | str]]]:
    """Top-1/top-5 accuracy of every model under every spec, on the first ``num_examples`` images.

    Args:
        models: name -> model mapping [0, 1] images to logits; one model, or a pair (then the
            ``transfer`` specs are crafted on each model and evaluated on the other).
        batches: ``(images, labels)`` batches, e.g. the validation loader.
        specs: the attacks (see :func:`default_specs`).
        num_examples: stop after this many images (``None``: all).
        device: where to run.
        seed: seeds PGD's random start and Square, per batch (``seed + batch index``).
        progress: show a tqdm bar over the images.

    Returns:
        name -> rows ``{"attack", "eps", "steps", "top1", "top5", "n"}``, in ``specs`` order, then
        the ``<attack>_transfer`` rows (crafted on the other model).
    """
    if not 1 <= len(models) <= 2:
        raise ValueError(f"robustness_sweep: give one model or a pair, got {list(models)}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"robustness_sweep: num_examples must be >= 1, got {num_examples!r}")
    names = list(models)
    other = {a: b for a in names for b in names if a != b}
    keys = [(s.attack, s.eps, s.steps) for s in specs]
    keys += [(f"{s.attack}_transfer", s.eps, s.steps) for s in specs if s.transfer and other]
    counts = {n: {k: Counter() for k in keys} for n in names}
    seen = 0
    bar = tqdm(total=num_examples, desc="robustness", unit="img", disable=not progress, leave=False)
    for b, (x, y) in enumerate(_first(batches, num_examples, device)):
        for name, model in models.items():
            for spec in specs:
                bar.set_postfix_str(f"{name} {spec.attack} eps={spec.eps:.4f} steps={spec.steps}")
                adv = run_attack(model, spec, x, y, seed=seed + b)
                key = (spec.attack, spec.eps, spec.steps)
                counts[name][key].update(topk_correct(_logits(model, adv), y))
                if spec.transfer and name in other:
                    victim = other[name]
                    tkey = (f"{spec.attack}_transfer", spec.eps, spec.steps)
                    counts[victim][tkey].update(topk_correct(_logits(models[victim], adv), y))
        seen += len(y)
        bar.update(len(y))
    bar.close()
    if seen == 0:
        raise ValueError("robustness_sweep: no images (the loader is empty)")
    num_classes = _logits(models[names[0]], x[:1]).shape[1]
    cols = ("attack", "eps", "steps")
    return {m: [_row(cols, k, counts[m][k], seen, num_classes) for k in keys] for m in names}
