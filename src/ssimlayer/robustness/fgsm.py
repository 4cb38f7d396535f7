"""The fast gradient sign method (Goodfellow et al.), as used in §3.4 / Fig. 9 of the paper.

Images live in [0, 1] pixel space (the models normalise internally), so ``eps`` is in units of the
[0, 1] range: ``eps = 1/255`` is one grey level of an 8-bit image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

__all__ = ["fgsm", "fgsm_sweep", "check_eps"]

Loss = Callable[[Tensor, Tensor], Tensor]


def check_eps(eps: float | Iterable[float]) -> list[float]:
    """Return ``eps`` as a list of floats; ``ValueError`` naming any negative or non-finite value."""
    scalar = isinstance(eps, (int, float, str, bytes)) or not isinstance(eps, Iterable)
    values = [eps] if scalar else list(eps)
    for e in values:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e < 0:
            raise ValueError(
                f"FGSM eps must be finite and >= 0 (numbers in pixel units of [0, 1] images, "
                f"e.g. eps=[0.0,0.01]; 8/255 = 0.0314), got {e!r}"
            )
    return [float(e) for e in values]


def _check_images(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"FGSM expects images of shape (B, C, H, W), got {tuple(x.shape)}")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(
            f"FGSM expects [0, 1] images (normalise inside the model), got values in [{lo:.3g}, "
            f"{hi:.3g}]"
        )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, then back in the mode it was given in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def input_gradient_sign(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Loss = F.cross_entropy
) -> Tensor:
    """``sign(grad_x J(theta, x, y))`` (Eqs. 20-21) in eval mode, without touching the parameters'
    ``.grad``."""
    with _eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x_ = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x_), y), x_)
    return grad.sign()  # torch.sign is 0 where the gradient is 0, as Eq. 21


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, loss_fn: Loss = F.cross_entropy
) -> Tensor:
    r"""Adversarial examples by one signed-gradient step (Eq. 20), clipped to the image range.

    .. math::
        x_{adv} = \mathrm{clip}_{[0, 1]}\big(x + \epsilon \, \mathrm{sign}(\nabla_x J(\theta, x, y))\big)

    Args:
        model: maps [0, 1] images to logits.
        x: images in [0, 1], shape :math:`(B, C, H, W)`.
        y: integer labels, shape :math:`(B,)`.
        eps: step size in [0, 1] pixel units, ``>= 0``.
        loss_fn: ``J``; the training loss (cross-entropy) by default.

    Returns:
        The perturbed images, detached, with ``|x_adv - x| <= eps`` everywhere (up to float32
        rounding).

    Examples:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> x, y = torch.rand(2, 3, 2, 2), torch.tensor([0, 2])
        >>> bool((fgsm(model, x, y, 0.01) - x).abs().max() <= 0.01 + 1e-6)
        True
    """
    (eps,) = check_eps(eps)
    _check_images(x)
    return (x + eps * input_gradient_sign(model, x, y, loss_fn)).clamp_(0.0, 1.0).detach()


def fgsm_sweep(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    eps: Sequence[float],
    num_classes: int = 10,
    top_k: Sequence[int] = (1, 5),
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    loss_fn: Loss = F.cross_entropy,
    progress: bool = True,
    desc: str = "FGSM sweep",
) -> list[dict[str, float]]:
    """Top-k accuracy under FGSM at every ``eps``: one row per eps, ``{"eps", "top1", "top5"}``.

    The gradient sign does not depend on ``eps``, so it is computed once per batch and reused for
    every ``eps``; ``eps = 0`` is therefore exactly the clean accuracy.

    Args:
        model: maps [0, 1] images to logits; left in the mode it was given in.
        batches: an iterable of ``(images, labels)``, e.g. a ``DataLoader``.
        eps: noise levels, each ``>= 0``.
        num_classes: for the top-k metrics.
        top_k: which top-k accuracies to report (keys ``top{k}``).
        max_batches: stop after this many batches (``None``: all).
        device: where to run; the model's device by default.
        loss_fn: the attacked loss.
        progress, desc: show a tqdm bar, with this label.
    """
    eps = check_eps(eps)
    ks = [k for k in top_k if k <= num_classes]
    if device is None:
        device = next(model.parameters()).device
    acc = {
        e: {k: MulticlassAccuracy(num_classes, top_k=k, average="micro").to(device) for k in ks}
        for e in eps
    }
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    bar = tqdm(batches, total=total, desc=desc, disable=not progress, leave=False)
    with _eval_mode(model):
        for i, (x, y) in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            _check_images(x)
            sign = input_gradient_sign(model, x, y, loss_fn)
            with torch.no_grad():
                for e in eps:
                    logits = model((x + e * sign).clamp_(0.0, 1.0))
                    for metric in acc[e].values():
                        metric.update(logits, y)

    def value(metric: MulticlassAccuracy) -> float:
        return metric.compute().item() if metric.update_count else float("nan")

    return [{"eps": e, **{f"top{k}": value(m) for k, m in acc[e].items()}} for e in eps]
