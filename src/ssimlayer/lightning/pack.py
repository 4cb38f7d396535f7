"""Several runs of one model config (seeds) trained together as one packed network on one device.

A pack of ``k`` runs advances all ``k`` in one process, one grouped forward and backward per step
(:class:`ssimlayer.models.packed.PackedConvNet`), so that batch-32 steps fill a GPU. Each member
keeps what it has alone: its initial weights (built after ``seed_everything(seed)``, as
``ssimlayer.train`` builds them), its data order and flips (a
:class:`ssimlayer.data.DeviceLoader` seeded with its seed, as ``data.device_resident=true`` draws
them alone), its share of the optimiser state, its metrics and its run dir with the files a solo
run writes (``config_resolved.yaml``, ``provenance.json``, ``epochs.csv``, ``metrics.json``,
``checkpoints/last.ckpt`` that the solo model loads, the FGSM sweep and the filter grids), written
by the same callbacks a solo run uses.

Why the members' updates are their solo updates: the loss is the sum of the members' mean
cross-entropies, so member ``i``'s gradient is its solo gradient (the other terms do not depend on
its weights), and SGD with momentum and weight decay is elementwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssimlayer.data.device_loader import DeviceLoader, DeviceSampler
from ssimlayer.data.groups import BatchGroups
from ssimlayer.lightning.fgsm_sweep import FGSMSweep
from ssimlayer.lightning.filters import FilterVisualisation
from ssimlayer.lightning.layer_health import LayerHealth, first_images, tracked_layers
from ssimlayer.lightning.module import ClassifierModule, TopKAccuracy, WeightedMean
from ssimlayer.lightning.run_summary import RunSummary
from ssimlayer.models.packed import PackedConvNet

__all__ = ["PackMembers", "PackedClassifierModule", "PackedDataModule", "PackedDeviceLoader"]


class PackedClassifierModule(ClassifierModule):
    """:class:`ClassifierModule` training ``k`` members of one config as one packed network.

    Batches are ``x (B, k C, H, W)`` with ``y (B, k)`` (:class:`PackedDeviceLoader`), or a plain
    ``(B, C, H, W)`` batch with ``(B,)`` labels, which every member sees (validation). The loss is
    the sum of the members' mean losses; metrics are kept per member (:meth:`member_metrics`).
    ``steps_per_execution``, ``cuda_graph``, ``compile`` and ``channels_last`` are the members'
    settings and work as for one run.

    Args:
        members: the runs' modules, built from one model config (their seeds differ). Their nets
            are not trained: :meth:`unpack` copies the pack's weights into them.
    """

    def __init__(self, members: Sequence[ClassifierModule]) -> None:
        first = members[0]
        problems = [
            f"member {i}: {what}"
            for i, m in enumerate(members)
            for what, bad in (
                ("has an LR scheduler (a pack shares one optimiser)", m.scheduler_factory),
                ("has another model name", m.name != first.name),
                ("has other hyperparameters", dict(m.hparams) != dict(first.hparams)),
                (
                    "sets ssim_weight_decay_scale (a pack keeps one optimiser parameter group; "
                    "train such runs alone)",
                    m.hparams.get("ssim_weight_decay_scale", 1.0) != 1.0,
                ),
            )
            if bad
        ]
        if problems:
            raise ValueError("PackedClassifierModule: " + "; ".join(problems))
        # the members' settings (equal, checked above)
        super().__init__(
            PackedConvNet([m.net for m in members]), first.optimizer_factory, **first.hparams
        )
        for store in (self._hparams, self._hparams_initial):
            store.pop("members", None)
        self.members = list(members)  # a plain list: not parameters of the pack
        k = self.k = len(members)
        ks = [t for t in (1, 5) if t <= first.hparams.num_classes]
        self.train_metrics = nn.ModuleDict({f"top{t}": TopKAccuracy(t, members=k) for t in ks})
        self.val_metrics = nn.ModuleDict({f"top{t}": TopKAccuracy(t, members=k) for t in ks})
        self.train_loss, self.val_loss = WeightedMean(k), WeightedMean(k)

    def _expand(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if y.ndim == 2:
            return x, y
        return x.repeat(1, self.k, 1, 1), y.unsqueeze(1).expand(-1, self.k)  # every member

    def _losses(self, logits: Tensor, y: Tensor) -> Tensor:
        """Each member's mean cross-entropy, ``(k,)``."""
        b, k, c = logits.shape
        return (
            F.cross_entropy(logits.reshape(b * k, c), y.reshape(b * k), reduction="none")
            .view(b, k)
            .mean(0)
        )

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        x, y = self._expand(*batch)
        logits = self(x)  # (B, k, C)
        losses = self._losses(logits, y)
        accuracies, mean_loss = self._metrics(split)
        mean_loss.update(losses, len(y))
        for metric in accuracies.values():
            metric.update(logits, y)
        return losses.sum()

    def _graph_body(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self(x)
        losses = self._losses(logits, y)
        losses.sum().backward()
        self.optimizers().optimizer.step()
        logits, losses = logits.detach(), losses.detach()
        self.train_loss.accumulate(losses, len(y))
        for metric in self.train_metrics.values():
            metric.accumulate(logits, y)
        return logits, losses.sum()

    def _log_once(self, split: str) -> None:
        """Nothing: PackMembers reads the per-member metrics at each epoch's end, not self.log."""

    def on_validation_epoch_start(self) -> None:
        for metric in (*self.val_metrics.values(), self.val_loss):
            metric.reset()  # not logged, so Lightning does not reset them

    def member_metrics(self) -> list[dict[str, float]]:
        """This epoch's ``{train,val}/{loss,top1,top5}`` of each member (what a solo run logs)."""
        values: dict[str, Tensor] = {}
        for split in ("train", "val"):
            accuracies, mean_loss = self._metrics(split)
            for name, metric in (("loss", mean_loss), *accuracies.items()):
                if metric._update_count:
                    values[f"{split}/{name}"] = metric.compute().float().cpu()
        return [{key: float(v[i]) for key, v in values.items()} for i in range(self.k)]

    def unpack(self) -> list[ClassifierModule]:
        """The members with the pack's current weights, on the pack's device."""
        self.net.unpack_into([m.net for m in self.members])
        return [m.to(self.device) for m in self.members]

    def member_optimizer_state(self, i: int) -> dict[str, Any]:
        """Member ``i``'s share of the optimiser state, as its solo optimiser's ``state_dict``."""
        opt = self.optimizers()
        opt = getattr(opt, "optimizer", opt)
        names = {p: n for n, p in self.net.named_parameters()}
        member_names = [n for n, _ in self.members[i].net.named_parameters()]
        state: dict[int, dict[str, Any]] = {}
        for p, s in opt.state.items():
            name = names[p]
            member_name = self.net.member_tensor(name, p, i)[0]
            state[member_names.index(member_name)] = {
                key: self.net.member_tensor(name, v, i)[1].clone() if v.shape == p.shape else v
                for key, v in s.items()
            }
        n = len(member_names)  # {**g, "params": ...} keeps "params" last, as a solo state_dict
        groups = [{**g, "params": list(range(n))} for g in opt.state_dict()["param_groups"]]
        return {"state": state, "param_groups": groups}


class PackedDeviceLoader:
    """``k`` :class:`DeviceLoader` s over one device-resident split, one per member seed, zipped.

    Member ``i``'s order and flips are those of ``DeviceLoader`` with ``DeviceSampler(seed=
    seeds[i])``, what a solo run with ``data.device_resident=true`` and ``seed=seeds[i]`` draws.
    The images are held once on the device.

    Shape:
        - Output: ``x`` ``(B, k C, H, W)`` (member ``i``'s batch in channels ``i C .. (i+1) C - 1``)
          and ``y`` ``(B, k)``.
    """

    batch_sampler = None  # Lightning inspects sampler/batch_sampler as on a DataLoader

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        seeds: Sequence[int],
        flip: float = 0.0,
        device: torch.device | str | None = None,
    ) -> None:
        device = torch.device(device) if device is not None else images.device
        images, labels = images.to(device), labels.to(device, torch.long)  # once for all members
        self.loaders = [
            DeviceLoader(
                images,
                labels,
                batch_size,
                sampler=DeviceSampler(len(images), shuffle=True, seed=int(s)),
                flip=flip,
                device=device,
            )
            for s in seeds
        ]
        self.sampler = self  # Lightning calls loader.sampler.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batches in zip(*self.loaders, strict=True):
            xs, ys = zip(*batches, strict=True)
            yield torch.cat(xs, dim=1), torch.stack(ys, dim=1)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for loader, s in zip(self.loaders, state["members"], strict=True):
            loader.load_state_dict(s)


class PackedDataModule(pl.LightningDataModule):
    """The members' datamodule (one config for all), with a :class:`PackedDeviceLoader` to train.

    Validation and the FGSM sweep use the inner datamodule's loaders: every member sees the same
    validation images, in the same order, as it would alone.
    """

    def __init__(self, inner: pl.LightningDataModule, seeds: Sequence[int]) -> None:
        super().__init__()
        self.inner, self.seeds = inner, [int(s) for s in seeds]

    def setup(self, stage: str | None = None) -> None:
        self.inner.trainer = self.trainer
        self.inner.setup(stage)

    def train_dataloader(self) -> PackedDeviceLoader | BatchGroups:
        dataset = self.inner.train_set
        flip = getattr(dataset.transform, "p", 0.0) if dataset.transform is not None else 0.0
        loader = PackedDeviceLoader(
            dataset.images,
            dataset.labels,
            self.inner.batch_size,
            self.seeds,
            flip=flip,
            device=self.trainer.strategy.root_device,
        )
        k = getattr(self.trainer.lightning_module, "steps_per_execution", 1)
        return BatchGroups(loader, k) if k > 1 else loader

    def val_dataloader(self) -> Any:
        self.inner.trainer = self.trainer
        return self.inner.val_dataloader()

    def eval_dataloader(self, split: str) -> Any:
        return self.inner.eval_dataloader(split)


class _MemberTrainer:
    """The pack's trainer as one member's callbacks see it: that member's metrics, no loggers."""

    def __init__(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        self._trainer = trainer
        self.callback_metrics = {k: torch.tensor(v) for k, v in metrics.items()}
        self.loggers: list = []
        self.checkpoint_callback = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


class PackMembers(pl.Callback):
    """Writes each member's run dir with its solo callbacks, as if it had trained alone.

    After every training epoch (validation has run): each member's ``LayerHealth`` statistics (its
    probe is its own first batch, its gradients its block of the pack's), its ``RunSummary`` row
    (``epochs.csv``, ``metrics.json``), its filter grids when due, and
    ``checkpoints/last.ckpt`` in the solo format (the member's module state dict, hyperparameters
    and optimiser state; ``ssimlayer.eval`` and ``prune`` load it). At the end of fit: the filter
    grids, the FGSM sweep and the finished ``metrics.json``. The summaries' history is saved in the
    pack's checkpoints, so a resumed pack rewrites complete ``epochs.csv`` files.

    Args:
        run_dirs: one per member.
        summaries, filters, sweeps, healths: per member, its ``RunSummary`` and optional
            ``FilterVisualisation``, ``FGSMSweep`` and ``LayerHealth`` (built from its own config).
    """

    def __init__(
        self,
        run_dirs: Sequence[str | Path],
        summaries: Sequence[RunSummary],
        filters: Sequence[FilterVisualisation | None],
        sweeps: Sequence[FGSMSweep | None],
        healths: Sequence[LayerHealth | None] | None = None,
    ) -> None:
        self.run_dirs = [Path(d) for d in run_dirs]
        self.summaries, self.filters, self.sweeps = list(summaries), list(filters), list(sweeps)
        self.healths = list(healths) if healths is not None else [None] * len(self.summaries)
        self._health_grads: list[list[tuple[str, nn.Parameter]]] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "summaries": [s.state_dict() for s in self.summaries],
            "healths": [h.state_dict() if h else None for h in self.healths],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for summary, state in zip(self.summaries, state_dict["summaries"], strict=True):
            summary.load_state_dict(state)
        for health, state in zip(self.healths, state_dict.get("healths", []), strict=False):
            if health is not None and state is not None:
                health.load_state_dict(state)

    def _views(self, trainer: pl.Trainer, pack: PackedClassifierModule) -> list[tuple]:
        metrics = pack.member_metrics()
        members = pack.unpack()
        return [(_MemberTrainer(trainer, m), member) for m, member in zip(metrics, members)]

    def on_fit_start(self, trainer: pl.Trainer, pack: PackedClassifierModule) -> None:
        for summary, (view, member) in zip(self.summaries, self._views(trainer, pack)):
            summary.on_fit_start(view, member)
        # Each member's watched weights as (packed parameter name, packed parameter): member i's
        # gradient is its block of the packed one (PackedConvNet.member_tensor).
        packed = {
            pack.net.member_tensor(n, p, 0)[0]: (n, p) for n, p in pack.net.named_parameters()
        }
        self._health_grads = [
            [packed[f"{name}.weight"] for _, name, _ in tracked_layers(m.net, h.layers)]
            if h
            else []
            for h, m in zip(self.healths, pack.members)
        ]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pack: PackedClassifierModule, batch: Any, batch_idx: int
    ) -> None:
        if all(h is None or h._probe is not None for h in self.healths):
            return
        x = first_images(batch)  # (B, k C, H, W): member i's images are its i-th channel block
        for i, (health, member) in enumerate(zip(self.healths, pack.members)):
            if health is not None:
                member.to(pack.device)  # still its initial weights: the pack has not unpacked
                images = x.chunk(pack.k, dim=1)[i]
                health.take_probe(images, member.net, trainer.current_epoch, trainer.global_step)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pack: PackedClassifierModule, optimizer: Any
    ) -> None:
        for i, (health, params) in enumerate(zip(self.healths, self._health_grads)):
            if health is not None and health.due():
                grads = [
                    None if p.grad is None else pack.net.member_tensor(n, p.grad, i)[1]
                    for n, p in params
                ]
                health.add_grads(grads)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pack: PackedClassifierModule) -> None:
        for summary in self.summaries:  # it only notes that validation ran (not the sanity check)
            summary.on_validation_epoch_end(trainer, pack)

    def on_train_epoch_end(self, trainer: pl.Trainer, pack: PackedClassifierModule) -> None:
        for i, (view, member) in enumerate(self._views(trainer, pack)):
            if self.healths[i] is not None and self.healths[i]._probe is not None:
                self.healths[i].epoch_end(view, member)  # into view.callback_metrics: the row
            self.summaries[i].on_train_epoch_end(view, member)
            if self.filters[i] is not None:
                self.filters[i].on_train_epoch_end(view, member)
            self._save_member(trainer, pack, i)

    def on_fit_end(self, trainer: pl.Trainer, pack: PackedClassifierModule) -> None:
        for i, (view, member) in enumerate(self._views(trainer, pack)):
            self.summaries[i].on_fit_end(view, member)
            if self.healths[i] is not None:
                self.healths[i].draw()
            if self.filters[i] is not None:
                self.filters[i].on_fit_end(view, member)
            if self.sweeps[i] is not None:
                self.sweeps[i].run(view, member)
            self.summaries[i].write_json(view, member, finished=True)

    def _save_member(self, trainer: pl.Trainer, pack: PackedClassifierModule, i: int) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        member = pack.members[i]
        folder = self.run_dirs[i] / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = {
            "state_dict": member.state_dict(),
            "hyper_parameters": dict(member.hparams),
            "optimizer_states": [pack.member_optimizer_state(i)],
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "pytorch-lightning_version": pl.__version__,
            "packed": {"member": i, "members": pack.k},
        }
        tmp = folder / ".last.ckpt.partial"
        torch.save(checkpoint, tmp)
        os.replace(tmp, folder / "last.ckpt")  # atomic, as ResumeCheckpoint
