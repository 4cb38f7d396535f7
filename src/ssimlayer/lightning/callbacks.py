"""Callbacks from config, as ``python -m ssimlayer.train`` and the training bench build them, and a
progress bar that redraws by time instead of every step and says which epoch of how many it is."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

__all__ = ["ThrottledProgressBar", "build_callbacks"]


class ThrottledProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every ``min_interval_s`` seconds (and at each end).

    Lightning's default redraws after every batch: about 0.2 ms of terminal output per step, a
    tenth of a GPU step at batch 32. A time interval keeps the bar as lively on a CPU (seconds per
    step) as on a GPU (milliseconds per step), where a fixed ``refresh_rate`` cannot.

    Each epoch's bar reads ``run 2 of 6, epoch 3/500`` (epochs counted from 1, as in
    ``epochs.csv``), so the whole run's progress is in view, not just the epoch's.

    Args:
        min_interval_s: seconds between redraws; 0 redraws every batch.
        label: what precedes the epoch, e.g. ``"run 2 of 6"`` (``${run_label:}`` in config).
        process_position, leave: as ``TQDMProgressBar``.
    """

    def __init__(
        self,
        min_interval_s: float = 0.25,
        label: str = "",
        process_position: int = 0,
        leave: bool = False,
    ) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        if min_interval_s < 0:
            raise ValueError(
                f"ThrottledProgressBar: min_interval_s must be >= 0, got {min_interval_s}"
            )
        self.min_interval_s = min_interval_s
        self.label = label
        self._last_draw = -math.inf

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """The bar's metrics as the files show them: accuracies in percent; no logger version."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        for key, value in items.items():
            if "/top" in key and isinstance(value, (int, float)):
                items[key] = f"{100 * value:.1f}%"
        return items

    def on_train_epoch_start(self, trainer: pl.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        prefix = f"{self.label}, " if self.label else ""
        self.train_progress_bar.set_description(f"{prefix}epoch {trainer.current_epoch + 1}{total}")

    def _should_update(self, current: int, total: int) -> bool:  # Lightning's hook for all bars
        if not super()._should_update(current, total):
            return False
        now = time.monotonic()
        if current == total or now - self._last_draw >= self.min_interval_s:
            self._last_draw = now
            return True
        return False


def build_callbacks(cfg: DictConfig, skip: Iterable[str] = ()) -> list[pl.Callback]:
    """Instantiate every entry of ``cfg.callbacks`` that has a ``_target_``, but those in ``skip``.

    A progress bar callback is left out when ``trainer.enable_progress_bar`` is false (Lightning
    refuses the combination), so that one override turns the bar off.
    """
    skip = set(skip)
    callbacks = [
        instantiate(c)
        for name, c in (cfg.get("callbacks") or {}).items()
        if c and "_target_" in c and name not in skip
    ]
    if not (cfg.get("trainer") or {}).get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks
