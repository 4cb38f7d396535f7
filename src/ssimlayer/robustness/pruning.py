"""Filter pruning of SSIM layers, the step §3.2 suggests ("a considerable number of SSIM filters have
very small weights, norm < 1, this would suggest that a filter pruning stage is worth investigation").

Two ways to prune a filter, because they differ for this layer:

- ``mode="channel"`` (default) removes the filter: its output map is set to 0, which is what deleting
  the filter (and the next layer's weights that read its map) does.
- ``mode="weights"`` only zeroes the filter's weights, as the paper's wording reads. Unlike a
  convolution, an SSIM filter of zeros does not output zeros: Eq. 8 then gives
  C1 C2 / ((mu_x^2 + C1)(sigma_x^2 + C2)), an input-dependent map.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ssimlayer.nn import SSIMConv2d

__all__ = ["ssim_layers", "select_filters", "prune_ssim_filters", "PRUNE_MODES"]

PRUNE_MODES = ("channel", "weights")


def ssim_layers(model: nn.Module) -> Iterator[tuple[str, SSIMConv2d]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, SSIMConv2d))


def select_filters(
    norms: Tensor, threshold: float | None = None, fraction: float | None = None
) -> Tensor:
    """Boolean mask of the filters to prune: norm < ``threshold``, or the ``fraction`` smallest."""
    if (threshold is None) == (fraction is None):
        raise ValueError("give exactly one of threshold (e.g. 1.0) or fraction (e.g. 0.25)")
    if threshold is not None:
        return norms < threshold
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    mask = torch.zeros_like(norms, dtype=torch.bool)
    k = int(round(fraction * norms.numel()))
    mask[torch.argsort(norms)[:k]] = True
    return mask


def prune_ssim_filters(
    model: nn.Module,
    threshold: float | None = None,
    fraction: float | None = None,
    mode: str = "channel",
) -> dict[str, float]:
    """Prune every SSIM layer of ``model`` in place; returns how many filters went, and the share.

    The fraction applies per layer. In ``"channel"`` mode the pruned maps are zeroed by a forward
    hook kept on the layer (``layer._prune_hook``), so the model stays prunable and inspectable.
    """
    if mode not in PRUNE_MODES:
        raise ValueError(f"mode must be one of {PRUNE_MODES}, got {mode!r}")
    pruned = total = 0
    for _, layer in ssim_layers(model):
        norms = layer.weight.detach().flatten(1).norm(dim=1)  # (C_out,)
        mask = select_filters(norms, threshold, fraction)
        with torch.no_grad():
            layer.weight[mask] = 0.0
        if mode == "channel":
            keep = (~mask).to(layer.weight.dtype).view(1, -1, 1, 1)
            layer._prune_hook = layer.register_forward_hook(lambda m, i, out, keep=keep: out * keep)
        pruned += int(mask.sum())
        total += mask.numel()
    if total == 0:
        raise ValueError("the model has no SSIM layer to prune")
    return {"pruned": pruned, "total": total, "share": pruned / total}
