"""The report's figures: convergence (Figs. 5, 8), layer health (issue 28) and accuracy versus FGSM
eps (Fig. 9)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ssimlayer.lightning.layer_health import health_columns, plot_layer_health  # noqa: E402
from ssimlayer.utils.runs import Run, mean_std  # noqa: E402

__all__ = ["convergence_plot", "fgsm_plot", "layer_health_plot"]


def _mean_band(
    series: list[dict[int, float]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    """The epochs every run has a value at, and the mean and mean -/+ std over runs there."""
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    cols = [[s[e] for s in series] for e in epochs]
    mean = [statistics.fmean(c) for c in cols]
    std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]
    return epochs, mean, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]


def convergence_plot(
    runs_by_model: dict[str, list[Run]], path: Path, title: str, chance: float | None = None
) -> Path | None:
    """Train (dashed) and validation (solid) error per epoch, mean over seeds with a ±1 std band.

    ``chance`` (top-1 accuracy in %, e.g. 100 / 7) adds a dotted line at its error.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for color, (model, runs) in zip(plt.cm.tab10.colors, runs_by_model.items()):
        for split, style in (("train", "--"), ("val", "-")):
            series = [  # epochs without validation (check_val_every_n_epoch > 1) have no val value
                {
                    int(row["epoch"]): 100 - float(row[f"{split}_top1_pct"])
                    for row in run.epochs
                    if row.get(f"{split}_top1_pct") not in (None, "")
                }
                for run in runs
            ]
            series = [s for s in series if s]
            if series:
                epochs, mean, low, high = _mean_band(series)
                label = f"{model} {split} (n={len(series)})"
                ax.plot(epochs, mean, style, color=color, label=label)
                ax.fill_between(epochs, low, high, color=color, alpha=0.15)
    if not ax.lines:
        plt.close(fig)
        return None
    if chance is not None:
        ax.axhline(100 - chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.1f} %)")
    ax.set(xlabel="epoch", ylabel="top-1 error (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def layer_health_plot(runs_by_model: dict[str, list[Run]], path: Path, title: str) -> Path | None:
    """Each model's layer-health columns of ``epochs.csv`` (``LayerHealth``), mean over seeds.

    ``None`` when no run has them (runs from before the callback).
    """
    curves = {}
    for model, runs in runs_by_model.items():
        tables = [run.epochs for run in runs if run.epochs and health_columns(list(run.epochs[0]))]
        if not tables:
            continue
        keys = health_columns(list(tables[0][0]))
        rows = []
        for same in zip(*tables):  # row i of every run, up to the shortest run
            row = {"epoch": float(same[0]["epoch"])}
            for key in keys:
                vals = [float(r[key]) for r in same if r.get(key) not in (None, "")]
                row[key] = statistics.fmean(vals) if vals else math.nan
            rows.append(row)
        curves[f"{model} (n={len(tables)})"] = rows
    return plot_layer_health(curves, path, title) if curves else None


def fgsm_plot(
    runs_by_model: dict[str, list[Run]],
    path: Path,
    title: str,
    suptitle: str | None = None,
    chance: float | None = None,
) -> Path | None:
    """Top-1 and top-5 versus FGSM eps on both splits, mean ± std over seeds.

    ``suptitle`` goes above both panels (e.g. which data); ``chance`` (top-1 %) adds a dotted line.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, split in zip(axes, ("train", "val")):
        for color, (model, runs) in zip(plt.cm.tab10.colors, runs_by_model.items()):
            eps_values = sorted(
                {float(r["eps"]) for run in runs for r in run.fgsm if r["split"] == split}
            )
            for k, style in ((1, "-o"), (5, "--s")):
                points = []
                for eps in eps_values:
                    vals = [run.fgsm_top(split, eps, k) for run in runs]
                    vals = [v for v in vals if v is not None]
                    if vals:
                        mean, sd = mean_std(vals)
                        points.append((eps, mean, 0.0 if math.isnan(sd) else sd))  # n=1: no bar
                if points:
                    xs, ys, sds = zip(*points)
                    label = f"{model} top-{k}"
                    ax.errorbar(xs, ys, sds, fmt=style, color=color, ms=3, capsize=2, label=label)
        ax.set(xlabel="FGSM eps ([0, 1] pixel units)", title=f"{title}: {split}")
        ax.grid(alpha=0.3)
    if not any(ax.lines for ax in axes):
        plt.close(fig)
        return None
    if chance is not None:  # after the check: only the models' lines count as drawn
        for ax in axes:
            ax.axhline(chance, color="grey", ls=":", lw=1, label=f"top-1 chance ({chance:.1f} %)")
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
