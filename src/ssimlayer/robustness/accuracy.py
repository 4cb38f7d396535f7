"""Top-k accuracy: the one definition every counter in the project uses (training metrics, packs,
attacks, corruptions, pruning). ``torchmetrics``' ``MulticlassAccuracy(top_k=k, average="micro")``
gives the same numbers (tested) and serves the FGSM sweep, whose counts it also gathers under DDP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["topk_correct", "topk_hits"]


def topk_hits(logits: Tensor, target: Tensor, k: int) -> Tensor:
    """Whether each target is among the ``k`` highest logits (last dimension): a bool tensor of
    ``logits.shape[:-1]``; ``target`` broadcasts against it. Reads nothing back to the host.

        >>> topk_hits(torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]]), torch.tensor([1, 2]), 1)
        tensor([ True, False])
    """
    top = logits.topk(k, dim=-1).indices  # (..., k)
    return (top == target.unsqueeze(-1)).any(dim=-1)


@torch.no_grad()
def topk_correct(logits: Tensor, y: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows of ``logits`` have ``y`` among their top ``k``, per ``k <= num classes``."""
    return {k: int(topk_hits(logits, y, k).sum()) for k in ks if k <= logits.shape[-1]}
