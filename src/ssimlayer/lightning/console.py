"""What a training run prints: its plan (:class:`RunPlan`) and pace, its closing summary
(:func:`print_summary`), and nothing a user cannot act on (:func:`quiet_known_noise`)."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ssimlayer.utils.runs import read_csv

__all__ = ["RunPlan", "format_duration", "print_summary", "quiet_known_noise"]

#: A CPU run whose estimate exceeds this many seconds is told about the CPU-sized schedule.
LONG_CPU_RUN_S = 3600


def _drop(start: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: not str(record.msg).startswith(start)


def quiet_known_noise() -> None:
    """Silence messages that are ours to fix or that a user cannot act on; real warnings stay.

    - Lightning's advertisement for its cloud logger at every ``Trainer``;
    - Lightning's use of a pytree API that torch deprecated (Lightning's to fix, not the user's);
    - torch's "No CUDA runtime is found, using CUDA_HOME" when Inductor compiles on a CPU machine.
    """
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_drop("💡 Tip"))
    logging.getLogger("torch.utils.cpp_extension").addFilter(_drop("No CUDA runtime"))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def format_duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``3.2 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class RunPlan(pl.Callback):
    """Print the run's plan at the start and, after ``estimate_after_steps`` steps, its pace.

    The estimate is the mean time of the steps after the first (which pays for compilation and
    caches), times the steps of all epochs, plus a proportional share for validation measured
    at the end of the first epoch only if that comes first. On a CPU a run estimated at more than
    an hour names ``schedule=cpu_short`` and ``make reproduce-cpu`` as the CPU-sized route.

    Args:
        label: e.g. ``"run 2 of 6"`` (``${run_label:}`` in config); printed with the model and seed.
        what: what the run is, e.g. ``"fig4_ssim seed 0"``.
        estimate_after_steps: steps timed before the estimate (the first step is not timed).
    """

    def __init__(self, label: str = "", what: str = "", estimate_after_steps: int = 20) -> None:
        self.label, self.what = label, what
        self.estimate_after_steps = estimate_after_steps
        self._t0: float | None = None
        self._timed = 0
        self._said = False

    def _say(self, text: str) -> None:
        print(f"[ssimlayer] {self.label + ': ' if self.label else ''}{text}", file=sys.stderr)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.num_training_batches
        epochs = trainer.max_epochs
        per_epoch = f"{steps:,} steps" if math.isfinite(steps) else "an unknown number of steps"
        device = pl_module.device.type
        start = f", from epoch {trainer.current_epoch + 1}" if trainer.current_epoch else ""
        self._say(f"{self.what}: {_plural(epochs, 'epoch')} of {per_epoch} on the {device}{start}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._said:
            return
        if self._t0 is None:  # the first step compiles and warms caches: time from its end
            self._t0 = time.perf_counter()
            return
        self._timed += 1
        steps = trainer.num_training_batches
        if self._timed < min(self.estimate_after_steps, steps - 1):
            return
        self._said = True
        per_step = (time.perf_counter() - self._t0) / self._timed
        epochs = trainer.max_epochs
        if not (math.isfinite(steps) and epochs and epochs > 0):
            return
        left_epochs = epochs - trainer.current_epoch
        per_epoch = per_step * steps
        total = per_epoch * left_epochs
        self._say(
            f"about {format_duration(per_epoch)} per epoch at the first steps' pace "
            f"({per_step * 1000:.0f} ms a step, validation and FGSM sweep not counted): "
            f"{format_duration(total)} for the {_plural(left_epochs, 'epoch')} to go"
        )
        if pl_module.device.type == "cpu" and total > LONG_CPU_RUN_S:
            self._say(
                "that is the paper's protocol on a CPU. For a CPU-sized run stop here (Ctrl-C; "
                "outputs so far are kept) and add schedule=cpu_short (4 epochs on 10,000 images, "
                "a few minutes per run), or run `make reproduce-cpu`"
            )


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _pct(value: Any) -> str:
    return "n/a" if value in (None, "") else f"{float(value):.2f} %"


def print_summary(metrics: Mapping[str, Any], run_dir: str | Path) -> None:
    """The run's last lines: final and best top-1 in percent, FGSM at 0.007, wall time, run dir.

    ``metrics`` as ``metrics.json`` holds it; the FGSM rows come from the run dir's
    ``fgsm_sweep.csv`` (both in percent).
    """
    fgsm = {
        r["split"]: r["top1_pct"]
        for r in read_csv(Path(run_dir) / "fgsm_sweep.csv")
        if math.isclose(float(r["eps"]), 0.007, abs_tol=1e-9)
    }
    lines = [
        f"{metrics.get('model')} seed {metrics.get('seed')}: "
        f"{_plural(int(metrics.get('epochs') or 0), 'epoch')} "
        f"in {format_duration(float(metrics.get('wall_time_s') or 0))} on {metrics.get('device')}",
        f"  top-1 train {_pct(metrics.get('final_train_top1_pct'))}, "
        f"val {_pct(metrics.get('final_val_top1_pct'))} "
        f"(best val {_pct(metrics.get('best_val_top1_pct'))} at epoch "
        f"{metrics.get('best_val_top1_epoch')})",
    ]
    if fgsm:
        lines.append(
            "  FGSM eps 0.007 top-1: "
            + ", ".join(f"{split} {_pct(v)}" for split, v in sorted(fgsm.items()))
        )
    lines.append(f"  run dir {run_dir} (metrics.json, epochs.csv, fgsm_sweep.csv, PNGs)")
    print("[ssimlayer] " + "\n".join(lines), file=sys.stderr)
