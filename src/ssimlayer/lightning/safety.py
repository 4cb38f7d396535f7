"""Stop a run whose loss is NaN or infinite, with a checkpoint of the weights before that step."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the checkpoint."""


class NonFiniteLossGuard(Callback):
    """Before each backward pass, check the loss; if it is not finite, save a checkpoint and stop.

    The check runs before backward and the optimiser step, so the checkpoint
    ``<dirpath>/nonfinite-step<step>.ckpt`` holds the last finite weights (``last.ckpt`` is left
    alone: resuming from it would only reach the same step again).

    Args:
        dirpath: the run's checkpoint folder.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        value = float(loss.detach())
        if math.isfinite(value):
            return
        step, epoch = trainer.global_step, trainer.current_epoch
        batch = trainer.fit_loop.epoch_loop.batch_idx
        path = self.dirpath / f"nonfinite-step{step:07d}.ckpt"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path)
        raise NonFiniteLossError(
            f"training loss is {value} at global step {step} (epoch {epoch}, batch {batch}); "
            f"stopped before the optimiser step. The weights before this step are in {path}. "
            f"Lower model.optimizer.lr, check the input data for NaN/Inf, or use "
            f"trainer.precision=32-true; "
            f"resume with ckpt_path={path} after changing the cause"
        )
