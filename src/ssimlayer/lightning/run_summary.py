"""Per-epoch metrics (``epochs.csv``) and the run summary (``metrics.json``), written as the run goes."""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ssimlayer.utils.runs import percent

__all__ = ["RunSummary"]

#: The metrics of each epochs.csv row, as it names them: accuracies in percent, the unit in the name.
COLUMNS = {
    "train/loss": "train_loss",
    "train/top1": "train_top1_pct",
    "train/top5": "train_top5_pct",
    "val/loss": "val_loss",
    "val/top1": "val_top1_pct",
    "val/top5": "val_top5_pct",
}
KEYS = tuple(COLUMNS)
#: Also copied into epochs.csv: any metric under these prefixes (LayerHealth's ``health/...``).
EXTRA_PREFIXES = ("health/",)


def _in_file(key: str, value):
    """An accuracy of :data:`KEYS` (a fraction) in percent; a loss or anything else as it is."""
    return value if key not in COLUMNS or key.endswith("loss") else percent(value)


def _train_images(trainer: pl.Trainer) -> int | None:
    """How many images the training split holds (the run's data, whatever its reader)."""
    dataset = getattr(trainer.datamodule, "train_set", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # a dataset without a length
        return None


class RunSummary(pl.Callback):
    """After every training epoch (validation has run by then) append a row to ``epochs.csv`` and rewrite ``metrics.json``.

    The row holds :data:`KEYS` and every metric under :data:`EXTRA_PREFIXES` that a callback before
    this one has put into ``trainer.callback_metrics`` (``LayerHealth``'s ``health/...`` columns).
    The ``val/`` columns stay empty in an epoch without validation
    (``trainer.check_val_every_n_epoch > 1``): what ``callback_metrics`` holds then is an earlier
    epoch's, or the sanity check's.

    Accuracies are written in percent, with the unit in the name (``val_top1_pct`` in
    ``epochs.csv``, ``final_val_top1_pct`` in ``metrics.json``); losses as they are.

    ``metrics.json`` holds the final (the last epoch that has it) and best (max over epochs)
    train/val top-1 and top-5, the epoch of the best val top-1 (counted from 1), epochs run, wall
    time, device and the model's parameter count, and ``extra``.

    Args:
        output_dir: the run dir.
        extra: constant fields for ``metrics.json`` (e.g. the seed and model name, from config).
    """

    def __init__(self, output_dir: str, extra: dict[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.extra = dict(extra or {})
        self.history: list[dict[str, float]] = []
        self._start = time.perf_counter()
        self._fit_wall: float | None = None
        self._resumed_wall = 0.0  # fit time spent before the checkpoint this run resumed from
        self._validated = False  # whether validation ran in the current training epoch

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._start = time.perf_counter() - self._resumed_wall
        # Where training runs: read now, since Lightning moves the module back to the CPU at the end.
        self._device = str(pl_module.device)
        self._device_name = (
            torch.cuda.get_device_name(pl_module.device)
            if pl_module.device.type == "cuda"
            else platform.processor() or "cpu"
        )
        self._fit_wall = None
        if self.history:  # resumed from a checkpoint: rewrite the rows it carried into this run dir
            self._write_csv()

    def state_dict(self) -> dict[str, Any]:
        # Saved in every checkpoint: a resumed run's epochs.csv and metrics.json cover all epochs.
        return {
            "history": [dict(r) for r in self.history],
            "wall_time_s": time.perf_counter() - self._start,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self._resumed_wall = float(state_dict.get("wall_time_s", 0.0))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Epochs counted from 1 (the number completed), as the progress bar and filter plots say.
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        metrics = trainer.callback_metrics
        validated, self._validated = self._validated, False
        for k in (*KEYS, *(k for k in metrics if k.startswith(EXTRA_PREFIXES))):
            if k in metrics and (validated or not k.startswith("val/")):
                row[k] = float(metrics[k])
        self.history.append(row)
        self._write_csv()
        self.write_json(trainer, pl_module)

    def _write_csv(self) -> None:
        path = self.output_dir / "epochs.csv"
        extra = {k: None for row in self.history for k in row if k.startswith(EXTRA_PREFIXES)}
        cols = ["epoch", "step", *KEYS, *extra]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[COLUMNS.get(c, c) for c in cols])
            w.writeheader()
            for row in self.history:
                w.writerow({COLUMNS.get(c, c): _in_file(c, row.get(c, "")) for c in cols})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_wall = time.perf_counter() - self._start  # training only, not the later sweep
        self.write_json(trainer, pl_module, finished=True)

    def write_json(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, finished: bool = False
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {**self.extra, "finished": finished}
        for k in KEYS:
            if k.endswith("loss"):
                continue
            vals = [r[k] for r in self.history if k in r and not math.isnan(r[k])]
            split, metric = k.split("/")
            last = next((r[k] for r in reversed(self.history) if k in r), None)
            summary[f"final_{split}_{metric}_pct"] = _in_file(k, last)
            summary[f"best_{split}_{metric}_pct"] = _in_file(k, max(vals) if vals else None)
        val = [(r["val/top1"], r["epoch"]) for r in self.history if "val/top1" in r]
        summary["best_val_top1_epoch"] = max(val)[1] if val else None
        summary["epochs"] = len(self.history)
        summary["train_images"] = _train_images(trainer)
        summary["global_step"] = trainer.global_step
        wall = self._fit_wall if self._fit_wall is not None else time.perf_counter() - self._start
        summary["wall_time_s"] = round(wall, 3)  # fit (train + val), without the FGSM sweep
        summary["device"] = getattr(self, "_device", str(pl_module.device))
        summary["device_name"] = getattr(self, "_device_name", None)
        summary["accelerator"] = type(trainer.accelerator).__name__
        summary["num_parameters"] = sum(p.numel() for p in pl_module.parameters())
        (self.output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
