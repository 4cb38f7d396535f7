"""Fig. 1's noise models and lossy compression, at the five CIFAR-10-C severities, on [0, 1] images.

The parameters are those of CIFAR-10-C: Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019, as defined in their
``make_cifar_c.py`` (github.com/hendrycks/robustness, ImageNet-C/create_c). The maths is the
same, written for ``(B, C, H, W)`` tensors with a seeded ``torch.Generator`` instead of numpy's
global RNG.
As CIFAR-10-C stores uint8 images, every corrupted image is quantised to 8 bits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.io import decode_jpeg, encode_jpeg
from tqdm.auto import tqdm

from ssimlayer.robustness.accuracy import topk_correct
from ssimlayer.robustness.attacks import _first, _logits, _row

__all__ = [
    "SEVERITIES",
    "CORRUPTIONS",
    "corrupt",
    "gaussian_noise",
    "shot_noise",
    "speckle_noise",
    "salt_and_pepper",
    "gaussian_blur",
    "jpeg",
    "corruption_sweep",
]

#: Per corruption, its parameter at CIFAR-10-C severities 1..5 (make_cifar_c.py):
#: gaussian_noise sigma; shot_noise photons per unit intensity (lower = noisier); speckle_noise
#: sigma of the multiplicative noise; impulse_noise (salt-and-pepper) fraction of values replaced;
#: gaussian_blur sigma in pixels; jpeg_compression quality.
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "salt_and_pepper": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    "shot_noise": (500, 250, 100, 75, 50),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "jpeg": (80, 65, 58, 50, 40),
}


def _check(x: Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"corruptions expect float images (B, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )


def _finish(x: Tensor, like: Tensor) -> Tensor:
    return x.clamp(0, 1).mul(255).round().div(255).to(like.dtype)  # 8-bit, as CIFAR-10-C


def gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """``clip(x + N(0, sigma^2))``."""
    _check(x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return _finish(x + sigma * noise, x)


def shot_noise(x: Tensor, photons: float, generator: torch.Generator | None = None) -> Tensor:
    """Poisson noise: ``clip(Poisson(x * photons) / photons)``."""
    _check(x)
    counts = torch.poisson((x * photons).cpu().double(), generator=generator)
    return _finish((counts / photons).to(x.device, x.dtype), x)


def speckle_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Multiplicative noise: ``clip(x + x * N(0, sigma^2))``."""
    _check(x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return _finish(x + x * sigma * noise, x)


def salt_and_pepper(x: Tensor, amount: float, generator: torch.Generator | None = None) -> Tensor:
    """Impulse noise as ``skimage.util.random_noise(mode='s&p')``: a fraction ``amount`` of the
    values (each channel of each pixel independently) set to 0 or 1 with equal odds."""
    _check(x)
    hit = torch.rand(x.shape, generator=generator) < amount
    salt = torch.rand(x.shape, generator=generator) < 0.5
    return _finish(torch.where(hit.to(x.device), salt.to(x.device, x.dtype), x), x)


def gaussian_blur(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Per-channel Gaussian blur as ``skimage.filters.gaussian``: radius ``int(4 sigma + 0.5)``,
    edges extended (``mode='nearest'``)."""
    _check(x)
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H
    return _finish(out, x)


def jpeg(x: Tensor, quality: int, generator: torch.Generator | None = None) -> Tensor:
    """JPEG round trip at ``quality`` (libjpeg via torchvision; CIFAR-10-C uses PIL)."""
    _check(x)
    u8 = x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    encoded = encode_jpeg(list(u8), quality=int(quality))
    decoded = decode_jpeg(encoded)
    return torch.stack(decoded).to(x.device, x.dtype).div(255)


CORRUPTIONS: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "salt_and_pepper": salt_and_pepper,
    "speckle_noise": speckle_noise,
    "shot_noise": shot_noise,
    "gaussian_blur": gaussian_blur,
    "jpeg": jpeg,
}


def corrupt(
    x: Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> Tensor:
    """``x`` under corruption ``name`` at CIFAR-10-C ``severity`` (1..5); same shape, dtype, [0, 1].

    Examples:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> y = corrupt(x, "jpeg", 1)
        >>> y.shape, y.dtype, bool(y.min() >= 0 and y.max() <= 1)
        (torch.Size([2, 3, 8, 8]), torch.float32, True)
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {list(CORRUPTIONS)}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be 1..5 (CIFAR-10-C), got {severity!r}")
    return CORRUPTIONS[name](x, SEVERITIES[name][severity - 1], generator=generator)


def corruption_sweep(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    names: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    num_examples: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float | int | str]]:
    """Top-1/top-5 under every corruption and severity: rows ``{"corruption", "severity", "top1",
    "top5", "n"}``; first ``clean`` (severity 0), last ``mean`` (over all corruptions and
    severities, severity ``""``). The noise of batch ``b`` is drawn from seed ``seed + b``, so two
    models evaluated with the same seed see the same corrupted images."""
    for n in names:
        if n not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {n!r}; choose from {list(CORRUPTIONS)}")
    keys = [("clean", 0)] + [(n, s) for n in names for s in severities]
    counts = {k: Counter() for k in keys}
    seen, num_classes = 0, 0
    bar = tqdm(batches, desc="corruptions", disable=not progress, leave=False)
    for b, (x, y) in enumerate(_first(bar, num_examples, device)):
        g = torch.Generator().manual_seed(seed + b)
        for name, sev in keys:
            xc = x if name == "clean" else corrupt(x, name, sev, generator=g)
            logits = _logits(model, xc)
            num_classes = logits.shape[1]
            counts[(name, sev)].update(topk_correct(logits, y))
        seen += len(y)
    if seen == 0:
        raise ValueError("corruption_sweep: no images (the loader is empty)")
    cols = ("corruption", "severity")
    rows = [_row(cols, k, counts[k], seen, num_classes) for k in keys]
    corrupted = rows[1:]
    mean = {m: sum(r[m] for r in corrupted) / max(len(corrupted), 1) for m in ("top1", "top5")}
    return rows + [{"corruption": "mean", "severity": "", **mean, "n": seen}]
