"""One LightningModule for every network of the paper: cross-entropy, top-1/top-5 accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ClassifierModule"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class ClassifierModule(pl.LightningModule):
    """Trains ``net`` (any [0, 1]-image classifier) with cross-entropy; logs ``{train,val}/{loss,
    top1,top5}`` per epoch.

    Args:
        net: the network (``ssimlayer.models.ConvNet`` in every config here).
        optimizer: a partial optimiser taking the parameters (``torch.optim.SGD`` with the §3.1
            settings in ``conf/model/*.yaml``).
        scheduler: optional partial LR scheduler taking the optimiser (the paper uses none).
        num_classes: for the accuracy metrics.
        name: the model's name in run names and ``metrics.json``.
        compile: ``torch.compile`` the network in place (``nn.Module.compile``: the state dict keeps
            its keys, so checkpoints load with or without it).
        channels_last: keep weights and inputs in channels-last memory format (faster convolutions
            on recent GPUs, especially with bf16).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: Callable | None = None,
        num_classes: int = 10,
        name: str = "model",
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.name, self.channels_last = name, channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()
        ks = [k for k in (1, 5) if k <= num_classes]
        metrics = MetricCollection(
            {f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro") for k in ks}
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        # Epoch-mean losses as metrics, so that a mid-epoch checkpoint can carry their running sums.
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], split: str, metrics: MetricCollection) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metrics.update(logits, y)
        mean_loss = self.train_loss if split == "train" else self.val_loss
        mean_loss.update(loss.detach(), weight=len(y))
        self.log(f"{split}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def _train_accumulators(self) -> dict[str, Metric]:
        return {**dict(self.train_metrics.items()), "train/loss": self.train_loss}

    def on_train_epoch_start(self) -> None:
        # Not called when Lightning resumes mid-epoch, so restored partial sums survive.
        for metric in self._train_accumulators().values():
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The running sums of this epoch's train metrics: a run resumed mid-epoch ends the epoch
        # with the same train/loss and train/top-k as one that was never interrupted.
        checkpoint["train_epoch_metrics"] = {
            name: {
                "state": {
                    k: v.detach().clone() if isinstance(v, Tensor) else v
                    for k, v in m.metric_state.items()
                },
                "update_count": m._update_count,
            }
            for name, m in self._train_accumulators().items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("train_epoch_metrics", {})
        for name, metric in self._train_accumulators().items():
            if name not in saved:
                continue
            for k, v in saved[name]["state"].items():
                setattr(metric, k, v.to(self.device) if isinstance(v, Tensor) else v)
            metric._update_count = saved[name]["update_count"]
            metric._computed = None

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
