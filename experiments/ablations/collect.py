"""Gather the ablation runs under outputs/ablations/<schedule>/ into results.csv and a plot.

Usage: .venv/bin/python experiments/ablations/collect.py [outputs/ablations/cpu_medium]
Each run dir is <root>/<factor>_<value>/<model>_seed<seed>/ (see run_shallow_slice.sh).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
LABELS = {("standardize", "on"): "default (standardize on; conv: no first ReLU)"}
FIELDS = [
    "factor",
    "value",
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
    "run_dir",
]


def read_run(run: Path) -> dict:
    factor, value = run.parent.name.rsplit("_", 1)
    m = json.loads((run / "metrics.json").read_text())
    error = run / "error.txt"
    nan = (
        re.search(r"loss is nan at global step (\d+)", error.read_text())
        if error.exists()
        else None
    )
    return {
        "factor": factor,
        "value": value,
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
        "run_dir": str(run),
    }


def column(run: Path, name: str) -> list[float]:
    with (run / "epochs.csv").open() as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name)]


def curves(run: Path) -> list[float]:
    return column(run, "val_top1_pct")


def main(root: Path) -> None:
    runs = sorted(p.parent for p in root.glob("*/*/metrics.json"))
    rows = [read_run(r) for r in runs]
    with (HERE / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["factor"], row["value"]), []).append(row)
    print("| model | factor = value | seeds | final val top-1 % | best val top-1 % | NaN (step) |")
    print("|---|---|---|---|---|---|")
    for (model, factor, value), g in sorted(groups.items()):

        def ms(key, g=g):
            xs = [r[key] for r in g]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            return f"{statistics.mean(xs):.2f} ± {sd:.2f}"

        nans = ", ".join(
            f"s{r['seed']}: " + (f"yes ({r['nan_step']})" if r["nan_step"] else "no") for r in g
        )
        seeds = len(g)
        print(
            f"| {model} | {factor} = {value} | {seeds} | {ms('final_val_top1_pct')} | "
            f"{ms('best_val_top1_pct')} | {nans} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), sharey=True)
    for ax, model in zip(axes if len(models) > 1 else [axes], models):
        keys = sorted({(r["factor"], r["value"]) for r in rows if r["model"] == model})
        for i, key in enumerate(keys):
            for j, run in enumerate(
                Path(r["run_dir"])
                for r in rows
                if r["model"] == model and key == (r["factor"], r["value"])
            ):
                ys = curves(run)
                ax.plot(
                    range(1, len(ys) + 1),
                    ys,
                    color=f"C{i}",
                    marker=".",
                    label=LABELS.get(key, f"{key[0]} = {key[1]}") if j == 0 else None,
                )
        ax.set(
            title=f"{model} ({rows[0]['schedule']}; one line per seed)",
            xlabel="epoch",
            ylabel="val top-1 %",
        )
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "val_top1.png", dpi=100)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/ablations/cpu_medium"))
