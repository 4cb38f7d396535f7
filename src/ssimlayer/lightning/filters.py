"""Fig. 6: the first layer's kernels as an image grid, and a histogram of their L2 norms."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor, nn
from torchvision.utils import make_grid

log = logging.getLogger(__name__)

__all__ = ["FilterVisualisation", "first_conv_weight", "filter_grid", "filter_norms"]


def first_conv_weight(model: nn.Module) -> Tensor:
    """The weight ``(C_out, C_in, kh, kw)`` of the first conv-like layer of ``model``.

    Uses ``model.net.first_layer`` (``ConvNet``) when there is one, else the first 4-D ``weight``.
    """
    net = getattr(model, "net", model)
    layer = getattr(net, "first_layer", None)
    if layer is not None:
        return layer.weight.detach()
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(w, Tensor) and w.ndim == 4:
            return w.detach()
    raise ValueError(f"{type(model).__name__} has no layer with a 4-D weight to visualise")


def filter_grid(weight: Tensor) -> Tensor:
    """A ``(3, H, W)`` image in [0, 1] of all kernels, each scaled to its own range.

    Three input channels are shown as RGB; otherwise the first input channel in grey.
    """
    w = weight.float().cpu()
    w = w if w.shape[1] == 3 else w[:, :1].expand(-1, 3, -1, -1)
    nrow = math.ceil(math.sqrt(len(w)))
    return make_grid(w, nrow=nrow, padding=1, normalize=True, scale_each=True, pad_value=1.0)


def filter_norms(weight: Tensor) -> Tensor:
    """L2 norm of each kernel (over input channels and space): shape ``(C_out,)``."""
    return weight.float().flatten(1).norm(dim=1).cpu()


class FilterVisualisation(pl.Callback):
    """Save ``filters{tag}_grid.png`` and ``filters{tag}_norms.png`` in the run dir, log them to W&B.

    Runs at the end of fit (``tag`` empty) and, if ``every_n_epochs`` is set, after every n-th
    training epoch (``tag = _epoch007`` after the 7th; epochs counted from 1, as in ``epochs.csv``).
    §3.2 remarks that many SSIM kernels end with norm < 1; the
    histogram's title gives that share, which is also written to ``filters{tag}_norms.json``.

    Args:
        output_dir: the run dir.
        every_n_epochs: also draw during training (``None``: only at the end).
    """

    def __init__(self, output_dir: str, every_n_epochs: int | None = None) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        done = trainer.current_epoch + 1  # epochs completed, this one included
        if n and done % n == 0:
            self.draw(trainer, pl_module, f"_epoch{done:03d}", done)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "", trainer.current_epoch)  # Lightning counted the last one

    def draw(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str, epoch: int
    ) -> list[Path]:
        if not trainer.is_global_zero:
            return []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        weight = first_conv_weight(pl_module)
        name = type(getattr(getattr(pl_module, "net", None), "first_layer", None)).__name__
        grid_path = self.output_dir / f"filters{tag}_grid.png"
        ax = Figure(figsize=(6, 6)).subplots()
        ax.imshow(filter_grid(weight).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"first layer ({name}) kernels {tuple(weight.shape)}, after epoch {epoch}")
        ax.figure.savefig(grid_path, dpi=120, bbox_inches="tight")

        norms = filter_norms(weight)
        share = (norms < 1).float().mean().item()
        finite = norms[torch.isfinite(norms)]
        n_bad = len(norms) - len(finite)
        if n_bad:  # a diverged run: draw what is finite, say what is not
            log.warning(
                "%d of %d first-layer kernels have a non-finite norm (the run diverged)",
                n_bad,
                len(norms),
            )
        norms_path = self.output_dir / f"filters{tag}_norms.png"
        ax = Figure(figsize=(6, 4)).subplots()
        if len(finite):
            ax.hist(finite.numpy(), bins=min(30, max(5, len(finite) // 2)), color="tab:blue")
        ax.axvline(1.0, color="tab:red", linestyle="--", label="norm = 1")
        ax.set_xlabel("kernel L2 norm")
        ax.set_ylabel("kernels")
        title = f"{name}: {100 * share:.1f}% of {len(norms)} kernels have norm < 1"
        ax.set_title(title + (f" ({n_bad} non-finite)" if n_bad else ""))
        ax.legend()
        ax.figure.savefig(norms_path, dpi=120, bbox_inches="tight")
        stats = {
            "epoch": epoch,
            "layer": name,
            "share_norm_below_1": share,
            "norm_mean": norms.mean().item(),
            "norm_min": norms.min().item(),
            "norm_max": norms.max().item(),
            "norms": norms.tolist(),
        }
        (self.output_dir / f"filters{tag}_norms.json").write_text(json.dumps(stats, indent=2))

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                step = trainer.global_step
                logger.log_image(key="filters/grid", images=[str(grid_path)], step=step)
                logger.log_image(key="filters/norms", images=[str(norms_path)], step=step)
                logger.log_metrics({"filters/share_norm_below_1": share}, step=step)
        return [grid_path, norms_path]
