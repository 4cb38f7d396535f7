"""Accuracy and FGSM accuracy of trained SSIM models before and after filter pruning (§3.2).

    python -m ssimlayer.prune RUN_DIR_OR_MULTIRUN_DIR... [--num-examples 2000] [--eps 0.007]

For each run with SSIM layers, writes ``pruning.csv`` into its run dir (header
``setting,mode,pruned,total,share_removed,clean_top1_pct,clean_top5_pct,fgsm_top1_pct,fgsm_top5_pct,eps,num_images``,
accuracies in percent):
no pruning, filters with L2 norm < 1, and the smallest 25 % and 50 % by norm, each as channel removal
and as weight zeroing (see :mod:`ssimlayer.robustness.pruning`), on the first validation images.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from tqdm import tqdm

from ssimlayer.robustness.accuracy import topk_correct
from ssimlayer.robustness.fgsm import check_eps, fgsm
from ssimlayer.robustness.pruning import prune_ssim_filters, ssim_layers
from ssimlayer.robustness.results import write_csv
from ssimlayer.utils.runs import find_runs, in_percent

SETTINGS = [
    ("none", {}),
    ("norm<1", {"threshold": 1.0}),
    ("smallest25%", {"fraction": 0.25}),
    ("smallest50%", {"fraction": 0.5}),
]
COLS = (
    "setting,mode,pruned,total,share_removed,clean_top1_pct,clean_top5_pct,fgsm_top1_pct,"
    "fgsm_top5_pct,eps,num_images"
).split(",")


def evaluate(model, batches, eps: float) -> dict[str, float]:
    counts = {"clean_top1": 0, "clean_top5": 0, "fgsm_top1": 0, "fgsm_top5": 0}
    n = 0
    for x, y in batches:
        with torch.no_grad():
            clean = topk_correct(model(x), y)
        adv = topk_correct(model(fgsm(model, x, y, eps)).detach(), y)
        for k in (1, 5):
            counts[f"clean_top{k}"] += clean[k]
            counts[f"fgsm_top{k}"] += adv[k]
        n += len(y)
    return in_percent({k: v / n for k, v in counts.items()}, counts) | {"num_images": n}


def prune_run(run, num_examples: int, eps: float) -> Path | None:
    base = run.load_model()
    if not any(True for _ in ssim_layers(base)):
        return None
    batches, seen = [], 0
    for x, y in run.eval_loader("val"):
        batches.append((x[: num_examples - seen], y[: num_examples - seen]))
        seen += len(batches[-1][1])
        if seen >= num_examples:
            break
    rows = []
    for setting, kwargs in tqdm(SETTINGS, desc=f"pruning {run.path.name}"):
        for mode in ("channel", "weights") if kwargs else ("none",):
            model = copy.deepcopy(base)
            if kwargs:
                stats = prune_ssim_filters(model, mode=mode, **kwargs)
            else:
                total = sum(m.out_channels for _, m in ssim_layers(model))
                stats = {"pruned": 0, "total": total, "share": 0.0}
            rows.append(
                {
                    "setting": setting,
                    "mode": mode,
                    "pruned": stats["pruned"],
                    "total": stats["total"],
                    "share_removed": stats["share"],
                    "eps": eps,
                    **evaluate(model.eval(), batches, eps),
                }
            )
    path = run.path / "pruning.csv"
    write_csv(path, rows, COLS)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs or multirun dirs")
    parser.add_argument("--num-examples", type=int, default=2000)
    parser.add_argument("--eps", type=float, default=0.007)
    parser.add_argument("--weights", choices=["last", "best"], default="last")
    args = parser.parse_args(argv)
    eps = check_eps(args.eps)[0]
    for run in find_runs(args.runs, weights=args.weights):
        path = prune_run(run, args.num_examples, eps)
        print(f"{run.path}: " + (f"wrote {path}" if path else "no SSIM layer, skipped"))


if __name__ == "__main__":
    main()
