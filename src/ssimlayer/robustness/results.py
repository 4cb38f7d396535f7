"""Files of a robustness evaluation: per-run CSVs and plots, and the mean ± std over seeds.

The rows here are as the files hold them: accuracies in percent, ``top1_pct`` and ``top5_pct``."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from ssimlayer.utils.runs import mean_std

__all__ = ["plot_attacks", "plot_corruptions", "summarise", "write_csv"]


def write_csv(path: Path, rows: list[dict], cols: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, series: dict[str, list[tuple]], xlabel: str, title: str) -> None:
    """Top-1 (%) against ``xlabel``, one line per ``series`` entry."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, pts in series.items():
        ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set(xlabel=xlabel, ylabel="top-1 accuracy (%)", ylim=(0, 100), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_attacks(path: Path, rows: list[dict], title: str) -> None:
    series: dict[str, list[tuple]] = defaultdict(list)
    clean = next((r["top1_pct"] for r in rows if r["attack"] == "clean"), None)
    for r in rows:
        if r["attack"] != "clean":
            series[f"{r['attack']}-{r['steps']}"].append((r["eps"], r["top1_pct"]))
    start = [(0.0, clean)] if clean is not None else []
    series = {label: sorted(start + pts) for label, pts in series.items()}
    _plot(path, series, "eps ([0, 1] pixel units)", title)


def plot_corruptions(path: Path, rows: list[dict], title: str) -> None:
    clean = next(r["top1_pct"] for r in rows if r["corruption"] == "clean")
    names = [n for n in dict.fromkeys(r["corruption"] for r in rows) if n not in ("clean", "mean")]
    series = {
        n: [(0, clean)] + [(r["severity"], r["top1_pct"]) for r in rows if r["corruption"] == n]
        for n in names
    }
    _plot(path, series, "CIFAR-10-C severity (0 = clean)", title)


def summarise(results: list[dict], kind: str, keys: list[str]) -> list[dict]:
    """Mean ± std over runs (seeds) per model and row key."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for res in results:
        for r in res[kind]:
            groups[(res["model"], *(r[k] for k in keys))].append(r)
    out = []
    for key, rows in groups.items():
        row = {"model": key[0], **dict(zip(keys, key[1:], strict=True)), "n_runs": len(rows)}
        for m in ("top1_pct", "top5_pct"):
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std([float(r[m]) for r in rows])
        out.append(row)
    return out
