"""Fig. 9 / Eq. 20: after training, top-1/top-5 under FGSM on the train and validation splits."""

from __future__ import annotations

import copy
import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import WandbLogger
from torch.utils.data import DataLoader

from ssimlayer.lightning.checkpointing import load_checkpoint
from ssimlayer.robustness.fgsm import check_eps, fgsm_sweep
from ssimlayer.utils.runs import in_percent

__all__ = ["FGSMSweep"]

#: fgsm_sweep.csv's columns: accuracies in percent.
COLUMNS = ["split", "eps", "top1_pct", "top5_pct"]

log = logging.getLogger(__name__)


class FGSMSweep(pl.Callback):
    """Run :func:`ssimlayer.robustness.fgsm_sweep` at the end of fit; write ``fgsm_sweep.csv``
    (``split,eps,top1_pct,top5_pct``: accuracies in percent) and ``fgsm_sweep.png``; log a
    ``wandb.Table`` and a line plot.

    Args:
        output_dir: the run dir.
        eps: noise levels in [0, 1] pixel units, each ``>= 0``.
        splits: which of ``"train"``, ``"val"`` to attack (un-augmented, via the datamodule's
            ``eval_dataloader``; else the trainer's loaders).
        max_batches: attack only this many batches per split (``None``: the whole split).
        weights: ``"final"`` (the weights at the end of fit) or ``"best"`` (the best checkpoint
            of the ``ModelCheckpoint`` callback, when it wrote one).
        progress: tqdm bar per split.
    """

    def __init__(
        self,
        output_dir: str,
        eps: Sequence[float],
        splits: Sequence[str] = ("train", "val"),
        max_batches: int | None = None,
        weights: str = "final",
        progress: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.eps = check_eps(eps)
        bad = [s for s in splits if s not in ("train", "val")]
        if bad:
            raise ValueError(f"FGSMSweep: unknown split(s) {bad}; use 'train' and/or 'val'")
        if weights not in ("final", "best"):
            raise ValueError(f"FGSMSweep: weights must be 'final' or 'best', got {weights!r}")
        self.splits, self.max_batches = list(splits), max_batches
        self.weights, self.progress = weights, progress
        self.rows: list[dict[str, float | str]] = []

    def _loader(self, trainer: pl.Trainer, split: str) -> DataLoader:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "eval_dataloader"):
            return dm.eval_dataloader(split)
        loader = trainer.train_dataloader if split == "train" else trainer.val_dataloaders
        return loader[0] if isinstance(loader, (list, tuple)) else loader

    def _model(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.nn.Module:
        path = getattr(trainer.checkpoint_callback, "best_model_path", "")  # "": no callback
        if self.weights == "final" or not path:
            if self.weights == "best":
                log.warning("FGSMSweep: no best checkpoint was written; attacking final weights")
            return pl_module
        model = copy.deepcopy(pl_module)
        state = load_checkpoint(path, map_location=pl_module.device)["state_dict"]
        model.load_state_dict(state)
        log.info("FGSMSweep: attacking the best checkpoint %s", path)
        return model

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank runs the sweep, rank 0 writes it. Under DDP the accuracy metrics inside the
        # sweep gather their counts over all ranks when they compute (torchmetrics does that
        # whenever torch.distributed is initialised), so a sweep on rank 0 alone would wait for
        # ranks that have moved on (gloo: "connection closed by peer"). All ranks attack the same
        # full splits, so the gathered counts are each rank's times the number of ranks, and
        # the accuracies are those of one process; on the trainer's own (sharded) loaders they
        # add up to the whole split. The wall time is that of one sweep.
        self.run(trainer, pl_module)
        trainer.strategy.barrier("FGSMSweep")  # rank 0 has written its files before anyone exits

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict]:
        model = self._model(trainer, pl_module)
        num_classes = getattr(pl_module.hparams, "num_classes", None) or 10
        self.rows = []
        for split in self.splits:
            rows = fgsm_sweep(
                model,
                self._loader(trainer, split),
                self.eps,
                num_classes=num_classes,
                max_batches=self.max_batches,
                device=pl_module.device,
                progress=self.progress,
                desc=f"FGSM sweep ({split})",
            )
            self.rows += [{"split": split, **in_percent(r)} for r in rows]
            for r in rows if trainer.is_global_zero else []:
                log.debug(
                    "FGSM %s eps=%.4f top1=%.4f top5=%s", split, r["eps"], r["top1"], r.get("top5")
                )
        if not trainer.is_global_zero:
            return self.rows
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._write_csv()
        plot = self._plot()
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, plot)
        return self.rows

    def _write_csv(self) -> None:
        with open(self.output_dir / "fgsm_sweep.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)

    def _series(self) -> dict[str, tuple[list[float], list[float]]]:
        out = {}
        for split in self.splits:
            rows = [r for r in self.rows if r["split"] == split]
            for k in ("top1", "top5"):
                if rows and f"{k}_pct" in rows[0]:
                    out[f"{split} {k}"] = ([r["eps"] for r in rows], [r[f"{k}_pct"] for r in rows])
        return out

    def _plot(self) -> Path:
        path = self.output_dir / "fgsm_sweep.png"
        ax = Figure(figsize=(6, 4)).subplots()
        for label, (xs, ys) in self._series().items():
            style = "--" if label.startswith("train") else "-"
            ax.plot(xs, ys, marker="o", linestyle=style, label=label)
        ax.set_xlabel("FGSM eps ([0, 1] pixel units)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        return path

    def _log_wandb(self, logger: WandbLogger, plot: Path) -> None:
        import wandb

        table = wandb.Table(columns=COLUMNS, data=[[r.get(c) for c in COLUMNS] for r in self.rows])
        series = self._series()
        xs = next(iter(series.values()))[0] if series else []
        line = wandb.plot.line_series(
            xs=xs,
            ys=[v[1] for v in series.values()],
            keys=list(series),
            title="FGSM sweep (Fig. 9)",
            xname="eps",
        )
        logger.experiment.log(
            {"fgsm/table": table, "fgsm/accuracy_vs_eps": line, "fgsm/plot": wandb.Image(str(plot))}
        )
