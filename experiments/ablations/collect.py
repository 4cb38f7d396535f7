"""Gather the ablation runs under outputs/ablations/<schedule>/ into results.csv and a plot.

Usage: .venv/bin/python experiments/ablations/collect.py [outputs/ablations/cpu_medium]
Each run dir is <root>/<setting>/<model>_seed<seed>/ (see run.sh); the setting is the folder's name
(``standardize_on`` and ``default``: the defaults the other settings change one factor of).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from ssimlayer.lightning.layer_health import first_column
from ssimlayer.report.build import BASELINES  # the runs' unchanged reading per slice
from ssimlayer.report.plots import layer_health_plot
from ssimlayer.utils.runs import Run, mean_std

HERE = Path(__file__).parent
MODELS = ("shallow_conv", "shallow_ssim", "fig4_plain", "fig4_ssim")
# the layer each pair differs in (the SSIM layer and the conv it replaces)
LAYER = {
    "shallow_conv": "conv1",
    "shallow_ssim": "ssim1",
    "fig4_plain": "conv3",
    "fig4_ssim": "ssim3",
}
FIELDS = [
    "setting",
    "model",
    "seed",
    "schedule",
    "epochs",
    "finished",
    "final_val_top1_pct",
    "best_val_top1_pct",
    "best_val_epoch",
    "final_train_top1_pct",
    "diverged",
    "nan_step",
    "wall_time_s",
    "max_conv2_out_std",
    "final_ssim_w_std",
    "final_ssim_out_std",
    "run_dir",
]


def read_run(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    error = run / "error.txt"
    nan = (
        re.search(r"loss is nan at global step (\d+)", error.read_text())
        if error.exists()
        else None
    )
    return {
        "setting": run.parent.name,
        "model": m["model"],
        "seed": m["seed"],
        "schedule": m["schedule"],
        "epochs": m["epochs"],
        "finished": "yes" if m["finished"] else "no",
        "final_val_top1_pct": round(m["final_val_top1_pct"], 2),
        "best_val_top1_pct": round(m["best_val_top1_pct"], 2),
        "best_val_epoch": m["best_val_top1_epoch"],
        "final_train_top1_pct": round(m["final_train_top1_pct"], 2),
        "diverged": "yes" if nan else "no",
        "nan_step": nan.group(1) if nan else "",
        "wall_time_s": round(m["wall_time_s"]),
        # the second layer's pre-ReLU output std on the LayerHealth probe, largest over epochs
        "max_conv2_out_std": round(max(column(run, "health/conv2/out_std")), 3),
        # the SSIM layer's filter std and output std after the last epoch ("" without one)
        **{
            f"final_ssim_{s}": round(v[-1], 4) if (v := ssim_column(run, s)) else ""
            for s in ("w_std", "out_std")
        },
        "run_dir": str(run),
    }


def column(run: Path, name: str) -> list[float]:
    with (run / "epochs.csv").open() as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name)]


def ssim_column(run: Path, stat: str) -> list[float]:
    with (run / "epochs.csv").open() as f:
        key = first_column(next(csv.reader(f)), "ssim", stat)
    return column(run, key) if key else []


def curves(run: Path) -> list[float]:
    return column(run, "val_top1_pct")


def main(root: Path) -> None:
    runs = sorted(p.parent for p in root.glob("*/*/metrics.json"))
    rows = [read_run(r) for r in runs]
    # a run neither finished nor stopped by the NaN guard is still training (or was killed)
    rows = [r for r in rows if r["finished"] == "yes" or r["diverged"] == "yes"]
    with (HERE / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["setting"]), []).append(row)
    order = {m: i for i, m in enumerate(MODELS)}
    print("| model | setting | seeds | final val top-1 % | best val top-1 % | NaN (step) |")
    print("|---|---|---|---|---|---|")
    for (model, setting), g in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1] not in BASELINES, kv[0][1])
    ):

        def ms(key, g=g):
            return "{:.2f} ± {:.2f}".format(*mean_std(r[key] for r in g))

        nans = ", ".join(
            f"s{r['seed']}: " + (f"yes ({r['nan_step']})" if r["nan_step"] else "no") for r in g
        )
        seeds = len(g)
        print(
            f"| {model} | {setting} | {seeds} | {ms('final_val_top1_pct')} | "
            f"{ms('best_val_top1_pct')} | {nans} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    cols = min(len(models), 2)
    rows_n = -(-len(models) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 4.2 * rows_n), squeeze=False)
    for ax, model in zip(axes.flat, models):
        settings = sorted(
            {r["setting"] for r in rows if r["model"] == model},
            key=lambda s: (s not in BASELINES, s),
        )
        for i, setting in enumerate(settings):
            group = [r for r in rows if r["model"] == model and r["setting"] == setting]
            for j, r in enumerate(group):
                ys = curves(Path(r["run_dir"]))
                label = f"{setting} (default)" if setting in BASELINES else setting
                ax.plot(
                    range(1, len(ys) + 1),
                    ys,
                    color=f"C{i}",
                    marker=".",
                    label=label if j == 0 else None,
                )
        ax.set(
            title=f"{model} ({rows[0]['schedule']}; one line per seed)",
            xlabel="epoch",
            ylabel="val top-1 %",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(HERE / "val_top1.png", dpi=100)
    for model in models:  # LayerHealth's curves of the layer the pair differs in, mean over seeds
        layer = f"/{LAYER[model]}/"
        by_setting = {
            setting: [
                SimpleNamespace(
                    epochs=[
                        {k: v for k, v in row.items() if "/" not in k or layer in k}
                        for row in Run(Path(r["run_dir"])).epochs
                    ]
                )
                for r in rows
                if r["model"] == model and r["setting"] == setting
            ]
            for setting in sorted({r["setting"] for r in rows if r["model"] == model})
        }
        title = f"{model}: layer {LAYER[model]}, {rows[0]['schedule']}"
        layer_health_plot(by_setting, HERE / f"layer_health_{model}.png", title)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/ablations/cpu_medium"))
