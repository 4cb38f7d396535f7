"""Stop a run whose loss is NaN or infinite, with a checkpoint of the last state before that step.

Reading the loss on the host every step (``float(loss)``) would make the CPU wait for the GPU at
every step, and at batch 32 that wait costs as much as the step. So the guard reads the losses in
batches: each step only copies the loss into a device buffer; the buffer is read (one
synchronisation) every ``check_every_n_steps`` steps, before any checkpoint is written, before
validation and at the end of training.

The price is that a non-finite loss is seen up to ``check_every_n_steps - 1`` steps late, when
the optimiser has already applied it (the weights are NaN by then). So at every check that finds
only finite losses the guard keeps a copy of the whole training state on the device (what
``Trainer.save_checkpoint`` would write: weights, optimiser, loop counters, loader position), and
when a check finds a non-finite loss it writes that copy: the last state all of whose losses were
finite, at most ``check_every_n_steps`` steps before the bad one. No checkpoint with the
non-finite step in its past is ever written by a checkpoint callback: they are checked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.callbacks import Callback
from torch import Tensor

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the checkpoint."""


class NonFiniteLossGuard(Callback):
    """Stop training at the first NaN/Inf loss, naming its step, after saving the last finite state.

    The checkpoint ``<dirpath>/nonfinite-step<step>.ckpt`` (``<step>``: the first step whose loss
    was not finite) holds the state of the last check before that step that found only finite
    losses; it resumes like ``last.ckpt`` (``ckpt_path=<it>``). ``last.ckpt`` is left alone: it is
    never written after a non-finite loss either. See the module docstring for why the check is
    batched.

    Args:
        dirpath: the run's checkpoint folder.
        check_every_n_steps: read the losses (one host-device synchronisation) and refresh the
            kept state every this many steps; 1 checks every step, as an unbatched guard would.
    """

    def __init__(self, dirpath: str, check_every_n_steps: int = 100) -> None:
        if check_every_n_steps < 1:
            raise ValueError(
                f"NonFiniteLossGuard: check_every_n_steps must be >= 1, got {check_every_n_steps}"
            )
        self.dirpath = Path(dirpath)
        self.check_every_n_steps = check_every_n_steps
        self._losses: Tensor | None = None  # (n,) losses since the last check, on the device
        self._where: list[tuple[int, int, int]] = []  # (global step, epoch, batch) of each
        self._kept: dict[str, Any] | None = None  # training state at the last clean check
        self._keeping = False

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if len(self._where) >= self.check_every_n_steps:  # several backward passes per batch
            self.check(trainer)
        n = len(self._where)
        if self._losses is None or self._losses.device != loss.device:
            self._losses = torch.empty(self.check_every_n_steps, device=loss.device)
        self._losses[n] = loss.detach()  # one device copy, no synchronisation
        batch = trainer.fit_loop.epoch_loop.batch_idx
        self._where.append((trainer.global_step, trainer.current_epoch, batch))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if len(self._where) >= self.check_every_n_steps:
            # Keep mid-epoch states only, as ResumeCheckpoint: a state saved on an epoch's last
            # batch would resume without that epoch's validation and summary row.
            last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            self.check(trainer, keep=not last)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._where = []
        self._keep(trainer)  # the state to fall back to if the very first steps go wrong

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.check(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self._keeping:  # any other checkpoint: never write one after a non-finite loss
            self.check(trainer)

    def check(self, trainer: pl.Trainer, keep: bool = False) -> None:
        """Read the losses since the last check; raise :class:`NonFiniteLossError` on a bad one.

        Called on every rank at the same points; the ranks agree through an all-reduce.
        """
        n = len(self._where)
        if n == 0 or self._losses is None:
            return
        bad = ~torch.isfinite(self._losses[:n])
        # first bad position on this rank, n if none; the smallest over ranks
        first = torch.where(bad, torch.arange(n, device=bad.device), n).min()
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        i = int(first)  # the synchronisation
        if i == n:
            self._where = []
            if keep:
                self._keep(trainer)
            return
        self._stop(trainer, i, float(self._losses[i]))

    def _keep(self, trainer: pl.Trainer) -> None:
        self._keeping = True
        try:
            state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        finally:
            self._keeping = False
        self._kept = apply_to_collection(state, Tensor, lambda t: t.detach().clone())

    def _stop(self, trainer: pl.Trainer, i: int, value: float) -> None:
        step, epoch, batch = self._where[i]
        late = trainer.global_step - step - 1  # steps run after the bad one before this check
        path = self.dirpath / f"nonfinite-step{step:07d}.ckpt"
        saved = "No state was kept (the guard had not started)."
        if self._kept is not None:
            if trainer.is_global_zero:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            trainer.strategy.save_checkpoint(self._kept, path)
            trainer.strategy.barrier("NonFiniteLossGuard")
            saved = (
                f"The last state with only finite losses before it (global step "
                f"{self._kept['global_step']}) is in {path}; resume with ckpt_path={path} after "
                f"changing the cause."
            )
        self._where, self._kept = [], None
        raise NonFiniteLossError(
            f"training loss is {value} at global step {step} (epoch {epoch}, batch {batch}); "
            f"seen {late} step(s) later (losses are read every {self.check_every_n_steps} steps "
            f"and before every checkpoint). {saved} "
            f"Lower model.optimizer.lr, check the input data for NaN/Inf, or use "
            f"trainer.precision=32-true"
        )
