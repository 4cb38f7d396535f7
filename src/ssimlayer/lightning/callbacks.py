"""Callbacks from config, as ``python -m ssimlayer.train`` and the training bench build them, and a
progress bar that redraws by time instead of every step."""

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

    Args:
        min_interval_s: seconds between redraws; 0 redraws every batch.
        process_position, leave: as ``TQDMProgressBar``.
    """

    def __init__(
        self, min_interval_s: float = 0.25, process_position: int = 0, leave: bool = False
    ) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        if min_interval_s < 0:
            raise ValueError(
                f"ThrottledProgressBar: min_interval_s must be >= 0, got {min_interval_s}"
            )
        self.min_interval_s = min_interval_s
        self._last_draw = -math.inf

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
