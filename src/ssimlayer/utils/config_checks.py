"""Check a composed training config before anything is created: no run dir, no W&B run, no data read.

Each error says which value is wrong and how to set it; the entry point prints it once and exits 2.
Deeper checks (a dataset's files, a checkpoint's model) stay with the code that reads them, which
the entry point also runs before it creates anything.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from ssimlayer.robustness.fgsm import check_eps

__all__ = ["check_config"]


def _get(cfg: DictConfig, key: str):
    """The value at dotted ``key``, or ``None`` when the config has no such key."""
    node = cfg
    for part in key.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def _require(ok: bool, key: str, value, want: str, example: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is not valid: {want} (e.g. {key}={example})")


def check_config(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming the first bad value of ``cfg`` (a ``conf/train.yaml`` config)."""

    def positive(key: str, example: str, allow_zero: bool = False) -> None:
        v = _get(cfg, key)
        if v is None:
            return
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
        _require(
            ok, key, v, "it must be a finite number " + (">= 0" if allow_zero else "> 0"), example
        )

    positive("model.optimizer.lr", "0.01")
    positive("model.optimizer.weight_decay", "1e-4", allow_zero=True)
    momentum = _get(cfg, "model.optimizer.momentum")
    if momentum is not None:
        ok = isinstance(momentum, (int, float)) and 0 <= momentum < 1
        _require(ok, "model.optimizer.momentum", momentum, "it must be in [0, 1)", "0.9")
    epochs = _get(cfg, "trainer.max_epochs")
    if epochs is not None:
        ok = isinstance(epochs, int) and (epochs >= 1 or epochs == -1)
        _require(ok, "trainer.max_epochs", epochs, "a whole number >= 1 (or -1: no limit)", "500")
    batch = _get(cfg, "data.batch_size")
    if batch is not None:
        ok = isinstance(batch, int) and batch >= 1
        _require(ok, "data.batch_size", batch, "a whole number >= 1", "32")
    seed = _get(cfg, "seed")
    _require(isinstance(seed, int), "seed", seed, "a whole number", "0")
    eps = _get(cfg, "callbacks.fgsm_sweep.eps")
    if eps is not None:
        check_eps(eps)
