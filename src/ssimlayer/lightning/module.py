"""One LightningModule for every network of the paper: cross-entropy, top-1/top-5 accuracy.

The training step is kept free of host-device synchronisation and of per-step logging work, since
at batch 32 a GPU step takes a few milliseconds: the metrics below update on the device without
reading anything back, and each epoch metric is handed to ``self.log`` once per epoch (Lightning
keeps the reference and computes it at the epoch's end), not once per step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch import Tensor, nn
from torchmetrics import Metric

from ssimlayer.lightning.checkpointing import CheckpointMismatchError
from ssimlayer.lightning.graphed_step import GraphedTrainStep, cuda_capture
from ssimlayer.lightning.step_hooks import StepHooks
from ssimlayer.nn import SSIMConv2d
from ssimlayer.robustness.accuracy import topk_hits

__all__ = ["ClassifierModule", "TopKAccuracy", "WeightedMean"]

#: The hooks an optimiser step calls around its backward and update (StepHooks calls them for the
#: manual steps, eager or replayed from a CUDA graph).
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class _GraphableMetric(Metric):
    """A metric that a CUDA graph (``ClassifierModule(cuda_graph=True)``) can update and reset:
    ``accumulate`` is ``update``'s arithmetic alone, without torchmetrics' bookkeeping."""

    full_state_update = False

    def reset(self) -> None:
        """torchmetrics' ``reset``, keeping each state tensor's identity (values set to the default).

        ``Metric.reset`` replaces the state tensors with fresh copies of their defaults; a CUDA
        graph that adds into the old tensors would then add into tensors nobody reads.
        """
        kept = {name: getattr(self, name) for name in self._defaults}
        super().reset()
        for name, tensor in kept.items():
            fresh = getattr(self, name)
            if (
                isinstance(tensor, Tensor)
                and isinstance(fresh, Tensor)
                and tensor.shape == fresh.shape
            ):
                tensor.copy_(fresh)
                setattr(self, name, tensor)


class WeightedMean(_GraphableMetric):
    """Mean of values with integer weights (batch sizes), updated without reading the device.

    ``torchmetrics.MeanMetric`` checks every value for NaN (a host read per update) and turns a
    Python weight into a device tensor (a blocking copy); this does neither. A NaN value makes
    the mean NaN, which is what the epoch's loss should show. The states have ``MeanMetric``'s
    names, so the running sums in checkpoints written with it load here.

    Each value is a scalar (a batch's mean loss, weighted by its batch size); with ``members=k``
    (a pack of k runs) it is ``(k,)``, one per member, and so is the mean.

    Examples:
        >>> m = WeightedMean()
        >>> m.update(torch.tensor(1.0), 3); m.update(torch.tensor(3.0), 1)
        >>> m.compute()
        tensor(1.5000)
    """

    def __init__(self, members: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        shape = () if members is None else (members,)
        self.add_state("mean_value", default=torch.zeros(shape), dist_reduce_fx="sum")  # sum w*x
        self.add_state("weight", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: int = 1) -> None:
        self.accumulate(value, weight)

    def accumulate(self, value: Tensor, weight: int = 1) -> None:
        # in place: no nn.Module.__setattr__ per step
        self.mean_value.add_(value.detach(), alpha=weight)
        self.weight.add_(weight)

    def compute(self) -> Tensor:
        return self.mean_value / self.weight


class TopKAccuracy(_GraphableMetric):
    """Share of samples whose label is among the ``k`` highest logits.

    The same number as ``torchmetrics``' ``MulticlassAccuracy(top_k=k, average="micro")``, from a
    handful of kernels per batch and without input validation (which reads the device).

    Args:
        k: how many of the highest logits count, ``>= 1``.
        members: for a pack of this many runs: logits ``(B, members, C)``, targets
            ``(B, members)``, one accuracy per member.

    Shape:
        - ``update(logits, target)``: ``(B, C)`` with ``C >= k``, and ``(B,)`` class indices.
        - ``compute()``: a scalar (``(members,)`` for a pack).

    Examples:
        >>> m = TopKAccuracy(k=2)
        >>> m.update(torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05]]), torch.tensor([2, 2]))
        >>> m.compute()
        tensor(0.5000)
    """

    def __init__(self, k: int = 1, members: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"TopKAccuracy: k must be >= 1, got {k}")
        self.k = k
        shape = () if members is None else (members,)
        self.add_state("correct", default=torch.zeros(shape), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.accumulate(logits, target)

    def accumulate(self, logits: Tensor, target: Tensor) -> None:
        self.correct.add_(topk_hits(logits.detach(), target, self.k).sum(dim=0))
        self.total.add_(len(target))

    def compute(self) -> Tensor:
        return self.correct / self.total


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compile_options(compile: bool | str) -> dict:
    """``nn.Module.compile`` keyword arguments for the ``compile`` option, or a clear error."""
    if compile is True:
        return {}
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return {"mode": compile}
    raise ValueError(
        f"model.compile must be false, true or one of torch.compile's modes "
        f"{', '.join(COMPILE_MODES)}; got {compile!r}"
    )


def _runs_steps_as_lightning(trainer: pl.Trainer) -> bool:
    """Whether ``ClassifierModule._backward_and_step`` does what ``manual_backward`` and
    ``LightningOptimizer.step`` would: one device and a precision plugin without a gradient
    scaler (32-true, bf16-mixed), exactly Lightning's classes (a subclass may add to them)."""
    precision = trainer.precision_plugin
    return type(trainer.strategy) is SingleDeviceStrategy and (
        type(precision) is Precision
        or (type(precision) is MixedPrecision and precision.scaler is None)
    )


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
            its keys, so checkpoints load with or without it). ``True`` is torch.compile's default
            mode; a string picks another: ``"reduce-overhead"`` replays the network's forward and
            backward from CUDA graphs on a GPU, which takes the host's per-layer launch work out of
            each step (the SSIM layer's is large at the paper's sizes; on a CPU it compiles as the
            default mode), ``"max-autotune"`` and ``"max-autotune-no-cudagraphs"`` also tune the
            kernels.
        channels_last: keep weights and inputs in channels-last memory format (faster convolutions
            on recent GPUs, especially with bf16).
        steps_per_execution: optimiser steps per Lightning iteration, ``>= 1``. With ``k > 1``
            the train loader hands out lists of ``k`` batches (``ssimlayer.data``'s datamodules do
            this when the model asks, see :class:`ssimlayer.data.BatchGroups`) and
            :meth:`training_step` runs one ordinary step on each (its hooks through
            :class:`ssimlayer.lightning.step_hooks.StepHooks` on one device in 32-bit or bf16
            precision, through Lightning's ``manual_backward`` elsewhere), so Lightning's
            per-iteration host cost (about a millisecond, a whole GPU step at batch 32) is paid
            once per ``k`` steps. Same batches, same updates, same metrics;
            ``trainer.global_step`` still counts optimiser steps. Uses manual optimisation, so
            ``trainer.gradient_clip_val`` and ``trainer.accumulate_grad_batches`` are not
            available with it; LR schedulers are stepped here as Lightning would (per epoch or
            per step, with their frequency).
            Checkpoints, the NaN guard and other per-batch hooks act between groups, and
            Lightning's batch counts (``limit_train_batches``, the progress bar) count groups;
            ``max_steps`` still counts optimiser steps. A run resumes only with the same choice of
            ``1`` or ``> 1``.
        cuda_graph: on a CUDA device, replay each training step (forward, loss, backward, SGD
            update) from a CUDA graph (:class:`ssimlayer.lightning.graphed_step.GraphedTrainStep`)
            after ``cuda_graph_warmup`` eager steps per batch shape: one replay instead of the
            host's per-kernel work. Same updates as eager steps; the train metrics' arithmetic is
            recorded in the graph too; the NaN guard and the other per-step hooks see every step
            (the backward and optimiser hooks are called after the replay, so they see the updated
            weights). Uses manual optimisation, like
            ``steps_per_execution > 1``, and combines with it. Needs one device, no LR scheduler
            (the graph keeps the learning rate it was captured with), no ``16-mixed`` precision
            (its gradient scaler reads the device) and no gradient clipping; on a CPU it warns and
            trains eagerly.
        cuda_graph_warmup: eager steps per batch shape before its capture, ``>= 1``.
        ssim_weight_decay_scale: multiplies the optimiser's weight decay for the filters
            (``weight``) of the net's :class:`ssimlayer.SSIMConv2d` layers, ``>= 0``: ``1.0``
            (default) is the §3.1 decay on every parameter, ``0`` none on the SSIM filters, ``2``
            twice as much (issue 28's ablation). Other than ``1.0`` the SSIM filters get their
            own optimiser parameter group (the second); a net without SSIM layers keeps one group
            and is unaffected. Not supported by a pack (:mod:`ssimlayer.lightning.pack`).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable | None = None,
        num_classes: int = 10,
        name: str = "model",
        compile: bool | str = False,
        channels_last: bool = False,
        steps_per_execution: int = 1,
        cuda_graph: bool = False,
        cuda_graph_warmup: int = 3,
        ssim_weight_decay_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not ssim_weight_decay_scale >= 0:
            raise ValueError(
                f"ssim_weight_decay_scale must be >= 0 (0: no weight decay on the SSIM filters, "
                f"1: the optimiser's), got {ssim_weight_decay_scale!r}"
            )
        self.ssim_weight_decay_scale = float(ssim_weight_decay_scale)
        if not isinstance(steps_per_execution, int) or steps_per_execution < 1:
            raise ValueError(
                f"steps_per_execution must be an int >= 1 (optimiser steps per Lightning "
                f"iteration), got {steps_per_execution!r}"
            )
        self.steps_per_execution = steps_per_execution
        self.cuda_graph, self.cuda_graph_warmup = bool(cuda_graph), cuda_graph_warmup
        self.automatic_optimization = steps_per_execution == 1 and not self.cuda_graph
        self._graphed: GraphedTrainStep | None = None  # set up in on_train_start
        self._step_hooks: StepHooks | None = None  # idem, for manual optimisation
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.name, self.channels_last = name, channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.compile_mode = compile
        if compile is not False:
            self.net.compile(**_compile_options(compile))
        ks = [k for k in (1, 5) if k <= num_classes]
        self.train_metrics = nn.ModuleDict({f"top{k}": TopKAccuracy(k) for k in ks})
        self.val_metrics = nn.ModuleDict({f"top{k}": TopKAccuracy(k) for k in ks})
        # Epoch-mean losses as metrics, so that a mid-epoch checkpoint can carry their running sums.
        self.train_loss, self.val_loss = WeightedMean(), WeightedMean()
        self._logged: set[str] = set()  # splits whose metrics self.log holds for this epoch

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracies, mean_loss = self._metrics(split)
        mean_loss.update(loss, len(y))
        for metric in accuracies.values():
            metric.update(logits, y)
        self._log_once(split)
        return loss

    def _metrics(self, split: str) -> tuple[nn.ModuleDict, WeightedMean]:
        if split == "train":
            return self.train_metrics, self.train_loss
        return self.val_metrics, self.val_loss

    def _log_once(self, split: str) -> None:
        # Once per epoch: Lightning keeps the metric objects and computes them at the epoch's end.
        # Per step, self.log costs more host time than a whole GPU step at batch 32.
        if split in self._logged:
            return
        self._logged.add(split)
        accuracies, mean_loss = self._metrics(split)
        for name, metric in (("loss", mean_loss), *accuracies.items()):
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, prog_bar=True)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return self._step(batch, "train")
        if self.steps_per_execution == 1:  # manual for the CUDA graph only: one batch
            batch = [batch]
        elif not isinstance(batch, list) or any(isinstance(part, Tensor) for part in batch):
            raise TypeError(
                f"steps_per_execution={self.steps_per_execution} needs a train loader that hands "
                f"out lists of batches; got one batch. Wrap the loader in "
                f"ssimlayer.data.BatchGroups(loader, {self.steps_per_execution}) (ssimlayer's "
                f"datamodules do it themselves) or set steps_per_execution=1"
            )
        optimizer, trainer = self.optimizers(), self.trainer
        for x_y in batch:  # one ordinary training step per batch, as Lightning's automatic loop
            if 0 <= trainer.max_steps <= trainer.global_step:
                break
            if self._graphed is not None:
                self._graphed_step(x_y, optimizer)
                continue  # no schedulers with the CUDA graph
            loss = self._step(x_y, "train")
            optimizer.zero_grad()
            if self._step_hooks is not None:
                self._backward_and_step(loss, optimizer)
            else:  # Lightning's own path: its other strategies and precisions
                self.manual_backward(loss)
                optimizer.step()
            self._step_schedulers("step")
        return None

    def _backward_and_step(self, loss: Tensor, optimizer: Any) -> None:
        """``manual_backward(loss)`` then ``optimizer.step()``, as Lightning runs them on one device
        in 32-bit or bf16 precision (no gradient scaler), with its hooks through StepHooks: the
        same calls in the same order, without Lightning's per-call cost (see step_hooks)."""
        hooks = self._step_hooks
        hooks("on_before_backward", loss)
        self.backward(loss)
        hooks("on_after_backward")
        optimizer._on_before_step()  # Lightning's step count
        hooks("on_before_optimizer_step", optimizer.optimizer)
        optimizer.optimizer.step()
        optimizer._on_after_step()

    def _graph_body(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """What the CUDA graph records: forward, loss, backward, the optimiser's own update, and
        the train metrics' arithmetic (their bookkeeping is done per replay by _graphed_step)."""
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizers().optimizer.step()
        logits, loss = logits.detach(), loss.detach()
        self.train_loss.accumulate(loss, len(y))
        for metric in self.train_metrics.values():
            metric.accumulate(logits, y)
        return logits, loss

    def _graphed_step(self, x_y: Any, optimizer: Any) -> None:
        """One training step from the CUDA graph, with the hooks and counts of an eager one."""
        x, y = x_y
        optimizer._on_before_step()  # Lightning's step count, as LightningOptimizer.step does
        logits, loss = self._graphed(x, y)
        hooks = self._step_hooks
        hooks("on_before_backward", loss)
        hooks("on_after_backward")
        hooks("on_before_optimizer_step", optimizer.optimizer)  # as Lightning passes it
        optimizer._on_after_step()
        for state in self._graph_metric_states:  # what Metric.update would do
            state["_update_count"] += 1
            state["_computed"] = None
        self._log_once("train")

    # The graph machinery; tests replace these to run the graphed path on the CPU.
    _graph_capture = staticmethod(cuda_capture)
    _graph_device_types = ("cuda",)

    def on_train_start(self) -> None:
        self._graphed, self._step_hooks = None, None
        if not self.automatic_optimization and _runs_steps_as_lightning(self.trainer):
            self._step_hooks = StepHooks(self.trainer, self, STEP_HOOKS)
        if not self.cuda_graph:
            return
        if self.device.type not in self._graph_device_types:
            warnings.warn(
                f"model.cuda_graph=true needs a CUDA device; training on {self.device} runs eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        trainer, problems = self.trainer, []
        if trainer.world_size > 1:
            problems.append(f"{trainer.world_size} processes (DDP): use one device")
        if trainer.lr_scheduler_configs:
            problems.append("an LR scheduler: the graph keeps the learning rate of its capture")
        if str(trainer.precision).startswith("16"):
            problems.append(f"precision {trainer.precision}: use 32-true or bf16-mixed")
        if self.compile_mode in ("reduce-overhead", "max-autotune"):
            problems.append(
                f"model.compile={self.compile_mode}, which captures its own CUDA graphs: use "
                f"true or max-autotune-no-cudagraphs"
            )
        if self.cuda_graph_warmup < 1:
            problems.append(f"cuda_graph_warmup={self.cuda_graph_warmup}: use >= 1")
        if problems:
            raise ValueError(
                "model.cuda_graph=true cannot run with " + "; ".join(problems) + " (or set "
                "model.cuda_graph=false)"
            )
        self._step_hooks = self._step_hooks or StepHooks(trainer, self, STEP_HOOKS)
        # The metrics' plain attributes, set without nn.Module.__setattr__'s checks (per step).
        self._graph_metric_states = [vars(m) for m in self._train_accumulators().values()]
        self._graphed = GraphedTrainStep(
            self._graph_body,
            [p for group in self.optimizers().optimizer.param_groups for p in group["params"]],
            warmup=self.cuda_graph_warmup,
            capture=self._graph_capture,
        )

    def on_train_end(self) -> None:
        self._graphed = None  # frees the graphs and their memory

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        """Step the LR schedulers due at this step or epoch end (manual optimisation only).

        What Lightning's automatic loop does: a scheduler with ``interval`` "step" steps after
        every ``frequency``-th optimiser step, one with "epoch" after every ``frequency``-th epoch;
        ``ReduceLROnPlateau`` gets its ``monitor`` metric.
        """
        trainer = self.trainer
        count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency:
                continue
            if not config.reduce_on_plateau:
                config.scheduler.step()
                continue
            value = trainer.callback_metrics.get(config.monitor)
            if value is None:
                raise ValueError(
                    f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged by this "
                    f"{interval}; logged: {sorted(trainer.callback_metrics)}"
                )
            config.scheduler.step(value)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def _train_accumulators(self) -> dict[str, Metric]:
        accuracies = {f"train/{name}": m for name, m in self.train_metrics.items()}
        return {**accuracies, "train/loss": self.train_loss}

    def on_train_epoch_start(self) -> None:
        # Not called when Lightning resumes mid-epoch, so restored partial sums survive.
        for metric in self._train_accumulators().values():
            metric.reset()
        self._logged.discard("train")

    def on_validation_epoch_start(self) -> None:
        self._logged.discard("val")

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
        hparams = checkpoint.get("hyper_parameters", {})
        written_with = hparams.get("steps_per_execution", 1)
        written_graph = bool(hparams.get("cuda_graph", False))
        written_automatic = written_with == 1 and not written_graph
        if "loops" in checkpoint and written_automatic != self.automatic_optimization:
            # Lightning keeps the optimiser-step count (global_step) in a different place for
            # automatic and manual optimisation: a cross-over would restart it at 0.
            raise CheckpointMismatchError(
                f"this checkpoint was written with steps_per_execution={written_with} and "
                f"cuda_graph={str(written_graph).lower()}; resume it with "
                + (
                    "steps_per_execution=1 and cuda_graph=false"
                    if written_automatic
                    else "steps_per_execution > 1 or cuda_graph=true"
                )
                + f" (now {self.steps_per_execution} and {str(self.cuda_graph).lower()}): "
                f"Lightning counts optimiser steps differently for automatic optimisation "
                f"(steps_per_execution=1, no CUDA graph) and manual optimisation (either of them), "
                f"so the run would restart its step count"
            )
        saved = checkpoint.get("train_epoch_metrics", {})
        for name, metric in self._train_accumulators().items():
            if name not in saved:
                continue
            for k, v in saved[name]["state"].items():
                if k in metric._defaults:  # skips states an older version wrote
                    setattr(metric, k, v.to(self.device) if isinstance(v, Tensor) else v)
            metric._update_count = saved[name]["update_count"]
            metric._computed = None

    def _ssim_filters(self) -> list[nn.Parameter]:
        return [m.weight for m in self.net.modules() if isinstance(m, SSIMConv2d)]

    def configure_optimizers(self):
        ssim = self._ssim_filters() if self.ssim_weight_decay_scale != 1.0 else []
        if not ssim:  # one group, as the paper: every parameter with the optimiser's settings
            optimizer = self.optimizer_factory(self.parameters())
        else:
            ids = {id(p) for p in ssim}
            rest = [p for p in self.parameters() if id(p) not in ids]
            optimizer = self.optimizer_factory([{"params": rest}, {"params": ssim}])
            decay = optimizer.defaults.get("weight_decay")
            if decay is None:
                raise ValueError(
                    f"ssim_weight_decay_scale={self.ssim_weight_decay_scale} needs an optimiser "
                    f"with a weight_decay setting; {type(optimizer).__name__} has none"
                )
            optimizer.param_groups[1]["weight_decay"] = decay * self.ssim_weight_decay_scale
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
