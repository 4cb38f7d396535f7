"""Inside the layers while they train: output spread, near-zero share, filter scale, gradient scale.

Issue 28: at initialisation the SSIM layer's output has std 0.006 (the plain net's third conv:
0.118) and its gradient-to-weight ratio is orders of magnitude below the plain net's. This callback
puts those numbers in every run's ``epochs.csv``, next to the accuracies, so a reading of the paper
can be judged by what it does to the layer, not only by the final accuracy.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor, nn

from ssimlayer.nn import SSIMConv2d

log = logging.getLogger(__name__)

__all__ = ["LayerHealth", "STATS", "health_columns", "plot_layer_health", "tracked_layers"]

#: Per layer, in column order (``health/<layer>/<stat>``).
STATS = ("out_mean", "out_std", "out_near0", "in_std", "w_std", "w_norm", "grad_ratio")
#: Short names of the layer kinds, as they appear in the column names.
KINDS = ((SSIMConv2d, "ssim"), (nn.Conv2d, "conv"), (nn.Linear, "fc"))
PREFIX = "health/"


def tracked_layers(net: nn.Module, layers: str = "all") -> list[tuple[str, str, nn.Module]]:
    """``(label, module name, module)`` of the layers to watch, in the net's order.

    Labels are the layer kind and its position among the net's conv-like and linear layers,
    counted from 1: ``conv1, conv2, ssim3, fc4`` in Fig. 4's SSIM network, ``conv3`` in the
    plain one. ``layers="ssim"`` keeps only the SSIM layers (with the same labels).
    """
    if layers not in ("all", "ssim"):
        raise ValueError(f"LayerHealth: layers must be 'all' or 'ssim', got {layers!r}")
    found, index = [], 0
    for name, module in net.named_modules():
        kind = next((k for cls, k in KINDS if isinstance(module, cls)), None)
        if kind is None:
            continue
        index += 1
        if layers == "all" or kind == "ssim":
            found.append((f"{kind}{index}", name, module))
    return found


def health_columns(keys: Sequence[str]) -> list[str]:
    """The ``health/...`` keys among ``keys``, in their order."""
    return [k for k in keys if k.startswith(PREFIX)]


def first_column(keys: Sequence[str], layer: str, stat: str) -> str | None:
    """The first ``health/<layer>.../<stat>`` key among ``keys`` (``layer="ssim"``: the first
    SSIM layer's), or ``None``."""
    return next((k for k in keys if k.startswith(PREFIX + layer) and k.endswith(f"/{stat}")), None)


class LayerHealth(pl.Callback):
    """Per epoch, each watched layer's output and filter statistics and its gradient scale.

    Logged as ``health/<layer>/<stat>`` (``<layer>`` as :func:`tracked_layers` names it, e.g.
    ``ssim3``) into ``trainer.callback_metrics`` (so ``RunSummary``, which must come after this
    callback, writes them into the epoch's row of ``epochs.csv``) and to the run's loggers (W&B):

    - ``out_mean``, ``out_std``: mean and std of the layer's output (before its ReLU) on a probe
      batch: the first ``probe_size`` images of the run's first training batch, kept for the whole
      run (and in checkpoints), so that the numbers move only because the weights do.
    - ``out_near0``: the share of those outputs with ``|y| < near_zero``.
    - ``in_std``: std of the layer's input on the probe (compare with ``w_std``: Eq. 8's
      contrast-structure term is small when the filters are much wider than the patches).
    - ``w_std``: std of all the layer's weights; ``w_norm``: the mean L2 norm of its filters
      (each output channel's weights).
    - ``grad_ratio``: ``||dL/dW|| / ||W||`` (Frobenius norms of the weight): the mean gradient norm
      over every ``grad_every_n_steps``-th optimiser step of the epoch, its first included (taken
      after backward, before the update), divided by the weight norm at the epoch's end (the
      same in every training path: eager, grouped steps, CUDA-graph replays, whose hooks run
      after the update). SGD moves a layer by about ``lr * grad_ratio`` of its size per step.

    The probe's statistics come from one forward of the probe batch at the end of each epoch
    (and once before the first step: epoch 0 in ``layer_health.csv`` and the plot), run eagerly
    even when the network is compiled or replayed from a CUDA graph. The gradient norms are summed
    on the device; everything is read back once per epoch, so training steps read nothing.
    ``layer_health.csv`` (epoch 0 included) and ``layer_health.png`` (output std, near-zero share
    and gradient ratio per layer vs epoch) go into the run dir; the plot every
    ``plot_every_n_epochs`` epochs and at the end of fit, and to W&B at the end.

    A pack (``ssimlayer.pack``) runs one per member through ``PackMembers``.

    Args:
        output_dir: the run dir.
        layers: ``"all"`` (conv, SSIM and linear layers) or ``"ssim"``.
        near_zero: the ``|y|`` below which an output counts as near 0 (default 0.01; the SSIM
            layer's outputs are in [-1, 1]).
        probe_size: images in the probe batch (fewer if the first batch is smaller).
        grad_every_n_steps: sample the gradient norm every n-th optimiser step (1: every step).
        plot_every_n_epochs: redraw ``layer_health.png`` every n epochs (``None``: at the end only).
    """

    def __init__(
        self,
        output_dir: str,
        layers: str = "all",
        near_zero: float = 0.01,
        probe_size: int = 32,
        grad_every_n_steps: int = 10,
        plot_every_n_epochs: int | None = 10,
    ) -> None:
        if layers not in ("all", "ssim"):
            raise ValueError(f"LayerHealth: layers must be 'all' or 'ssim', got {layers!r}")
        if not near_zero > 0:
            raise ValueError(f"LayerHealth: near_zero must be > 0, got {near_zero}")
        for name, value in (("probe_size", probe_size), ("grad_every_n_steps", grad_every_n_steps)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LayerHealth: {name} must be an int >= 1, got {value!r}")
        if plot_every_n_epochs is not None and plot_every_n_epochs < 1:
            raise ValueError(
                f"LayerHealth: plot_every_n_epochs must be >= 1 or null, got {plot_every_n_epochs}"
            )
        self.output_dir = Path(output_dir)
        self.layers, self.near_zero, self.probe_size = layers, near_zero, probe_size
        self.grad_every_n_steps, self.plot_every_n_epochs = grad_every_n_steps, plot_every_n_epochs
        self.history: list[dict[str, float]] = []  # epoch 0 (before the first step) included
        self._probe: Tensor | None = None
        self._steps = 0  # optimiser steps seen this epoch (the sampling clock)
        self._grad_sum: Tensor | None = None  # (layers,) float64, summed norms of this epoch
        self._grad_count = 0
        self._weights: list[nn.Parameter] | None = None  # the solo module's watched weights

    # --- the pieces PackMembers also uses -------------------------------------------------------

    def due(self) -> bool:
        """Count an optimiser step; whether its gradients are sampled (0, n, 2n, ... this epoch)."""
        due = self._steps % self.grad_every_n_steps == 0
        self._steps += 1
        return due

    def add_grads(self, grads: Sequence[Tensor | None]) -> None:
        """Add one step's gradient norms of the watched weights (on the device, no read)."""
        if not grads or any(g is None for g in grads):
            return
        norms = torch.stack([g.detach().float().norm() for g in grads]).double()
        if self._grad_sum is None:
            self._grad_sum = torch.zeros_like(norms)
        elif self._grad_sum.device != norms.device:  # restored from a checkpoint
            self._grad_sum = self._grad_sum.to(norms.device)
        self._grad_sum.add_(norms)
        self._grad_count += 1

    def take_probe(self, images: Tensor, net: nn.Module, epoch: int, step: int) -> None:
        """Keep the probe batch (once per run) and record the net's statistics on it now (a row
        for ``epoch``, the epochs completed: 0 before the first step; no gradient ratio)."""
        if self._probe is not None:
            return
        self._probe = images[: self.probe_size].detach().clone()
        self.history.append({"epoch": epoch, "step": step, **self._read(net, grads=False)})

    def epoch_end(self, trainer: Any, pl_module: pl.LightningModule) -> dict[str, float]:
        """This epoch's statistics: into ``trainer.callback_metrics``, the loggers and the CSV."""
        values = self._read(pl_module.net, grads=True)
        self._grad_sum, self._grad_count, self._steps = None, 0, 0
        epoch = trainer.current_epoch + 1  # as epochs.csv counts
        self.history.append({"epoch": epoch, "step": trainer.global_step, **values})
        metrics = {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}
        trainer.callback_metrics.update(metrics)  # float64: epochs.csv gets the value as read
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        self._write_csv()
        if self.plot_every_n_epochs and epoch % self.plot_every_n_epochs == 0:
            self.draw()
        return values

    def draw(self, trainer: Any = None) -> Path | None:
        if not self.history:
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = plot_layer_health(
            {"": self.history}, self.output_dir / "layer_health.png", "layer health"
        )
        for logger in getattr(trainer, "loggers", []) if path else []:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="health/plot", images=[str(path)], step=trainer.global_step)
        return path

    # --- Lightning hooks (a solo run) -----------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, "net", None)
        self._weights = None
        if net is None or hasattr(pl_module, "members"):  # a pack: PackMembers runs the members'
            log.info("LayerHealth: %s is not one network; not watching it", type(pl_module))
            return
        self._weights = [m.weight for _, _, m in tracked_layers(net, self.layers)]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._probe is None and self._weights is not None:
            net, epoch, step = pl_module.net, trainer.current_epoch, trainer.global_step
            self.take_probe(first_images(batch), net, epoch, step)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self._weights is not None and self.due():
            self.add_grads([w.grad for w in self._weights])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._weights is not None and self._probe is not None:
            self.epoch_end(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._weights is not None and trainer.is_global_zero:
            self.draw(trainer)

    def state_dict(self) -> dict[str, Any]:
        # In every checkpoint, mid-epoch ones too: a resumed run ends the epoch with the same
        # numbers as one never interrupted (the same probe, the same sampled gradients). Device
        # copies, not host ones: the NaN guard takes this state at its checks, which must not
        # wait for the device twice.
        return {
            "history": [dict(r) for r in self.history],
            "probe": None if self._probe is None else self._probe.detach().clone(),
            "steps": self._steps,
            "grad_sum": None if self._grad_sum is None else self._grad_sum.detach().clone(),
            "grad_count": self._grad_count,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self._probe = state_dict.get("probe")
        self._steps = state_dict.get("steps", 0)
        self._grad_sum = state_dict.get("grad_sum")
        self._grad_count = state_dict.get("grad_count", 0)

    # --- the measurement ------------------------------------------------------------------------

    def _read(self, net: nn.Module, grads: bool) -> dict[str, float]:
        """Every statistic of every watched layer, with one read from the device."""
        layers = tracked_layers(net, self.layers)
        device = next(net.parameters()).device
        outputs: dict[nn.Module, list[Tensor]] = {}  # the output and input statistics

        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            y, x = output.detach().float(), inputs[0].detach().float()
            var, mean = torch.var_mean(y, correction=0)
            near0 = (y.abs() < self.near_zero).float().mean()
            outputs[module] = [mean, var.sqrt(), near0, x.std(correction=0)]

        handles = [m.register_forward_hook(hook) for _, _, m in layers]
        try:
            with torch.no_grad():
                net.forward(self._probe.to(device))  # eager, also when compiled (nn.Module.compile)
        finally:
            for h in handles:
                h.remove()
        weights = [m.weight.detach().float() for _, _, m in layers]
        norms = torch.stack([w.norm() for w in weights])
        if grads and self._grad_sum is not None and self._grad_count:
            ratios = (self._grad_sum.to(device) / self._grad_count).float() / norms
        else:
            ratios = torch.full_like(norms, math.nan)
        rows = [
            torch.stack([*outputs[m], w.std(), w.flatten(1).norm(dim=1).mean(), ratio])
            for (_, _, m), w, ratio in zip(layers, weights, ratios)
        ]
        values = torch.stack(rows).cpu().tolist()  # (layers, stats): the one read
        return {
            f"{PREFIX}{label}/{stat}": float(f"{v:.6g}")
            for (label, _, _), row in zip(layers, values, strict=True)
            for stat, v in zip(STATS, row, strict=True)
        }

    def _write_csv(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cols = ["epoch", "step", *health_columns(list(self.history[-1]))]
        with open(self.output_dir / "layer_health.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.history)


def first_images(batch: Any) -> Tensor:
    """The images of a training batch: ``(x, y)``, or the first of a list of them (groups)."""
    while isinstance(batch, (list, tuple)) and not isinstance(batch[0], Tensor):
        batch = batch[0]
    return batch[0]


#: The plot's panels: (stat, y label, log scale).
PANELS = (
    ("out_std", "output std (probe batch)", True),
    ("out_near0", "share of |output| < near_zero", False),
    ("grad_ratio", "||grad|| / ||W||", True),
)


def plot_layer_health(
    curves: dict[str, list[dict[str, Any]]], path: Path, title: str
) -> Path | None:
    """One panel per :data:`PANELS` stat, one line per (curve, layer) over epochs.

    ``curves`` maps a label (e.g. a model name; ``""`` for one run) to rows with ``epoch`` and
    ``health/<layer>/<stat>`` keys (``epochs.csv`` rows, or ``LayerHealth.history``). Returns
    ``None`` (and draws nothing) when no row has a health column.
    """
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, len(PANELS), sharex=True)
    lines = [  # (curve, layer): one colour in every panel
        (label, layer)
        for label, rows in curves.items()
        for layer in sorted(
            {k.split("/")[1] for r in rows for k in r if k.startswith(PREFIX)},
            key=lambda s: (int("".join(c for c in s if c.isdigit()) or 0), s),
        )
    ]
    for ax, (stat, ylabel, log_scale) in zip(axes, PANELS):
        for color, (label, layer) in enumerate(lines):
            key = f"{PREFIX}{layer}/{stat}"
            points = [
                (float(r["epoch"]), v)
                for r in curves[label]
                if r.get(key) not in (None, "") and math.isfinite(v := float(r[key]))
                if v > 0 or not log_scale  # a log axis shows only positive values
            ]
            if points:
                xs, ys = zip(*points)
                name = f"{label} {layer}".strip()
                ax.plot(xs, ys, "-o", ms=2.5, color=f"C{color % 10}", label=name)
        if log_scale:
            ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
    if not any(ax.lines for ax in axes):
        return None
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
