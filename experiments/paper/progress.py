"""Where the paper protocol stands: the runs inside a resume archive, as small files to commit.

    python experiments/paper/progress.py [--archive outputs/paper/state] [--out experiments/paper/results]

Checks that the archive is whole (not that this code made it: reading needs no resume), unpacks
it into a temporary folder and writes, for every member run of every pack in it:
``curves.csv`` (per epoch: losses, top-1/top-5 in %, and the SSIM layer's filter std and output std
from ``LayerHealth``), ``summary.csv`` (per run: epochs done, final and best val top-1, the best
epoch, wall time, device), ``curves.png`` (train and val top-1 error per epoch, mean +- std over
seeds) and ``layer_health.png``. Prints the summary as a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from archive import read_state, whole  # noqa: E402

from ssimlayer.lightning.layer_health import first_column  # noqa: E402
from ssimlayer.lightning.run_summary import COLUMNS  # noqa: E402
from ssimlayer.report.plots import convergence_plot, layer_health_plot  # noqa: E402
from ssimlayer.utils import PROJECT_ROOT  # noqa: E402
from ssimlayer.utils.runs import find_runs, mean_std  # noqa: E402

CURVE_KEYS = tuple(COLUMNS.values())  # epochs.csv's losses and accuracies
SSIM_HEALTH = ("w_std", "out_std")  # of the SSIM layer: its filters' std, its output's std


def _ssim_health(row: dict) -> dict:
    out = {}
    for stat in SSIM_HEALTH:
        key = first_column(list(row), "ssim", stat)
        out[f"ssim_{stat}"] = row[key] if key else ""
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=PROJECT_ROOT / "outputs/paper/state")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "experiments/paper/results")
    args = parser.parse_args(argv)
    manifest = whole(args.archive)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(read_state(args.archive, manifest)), mode="r:xz") as t:
            t.extractall(tmp, filter="data")
        runs = sorted(find_runs(tmp), key=lambda r: (r.model, r.metrics.get("seed", 0)))
        by_model = defaultdict(list)
        curves, summary = [], []
        for run in runs:
            by_model[run.model].append(run)
            seed = run.metrics.get("seed")
            for row in run.epochs:
                curves.append(
                    {"model": run.model, "seed": seed, "epoch": row["epoch"]}
                    | {k: row.get(k, "") for k in CURVE_KEYS}
                    | _ssim_health(row)
                )
            m = run.metrics
            summary.append(
                {
                    "model": run.model,
                    "seed": seed,
                    "epochs": m.get("epochs"),
                    "train_images": run.train_images,
                    "final_val_top1_pct": m.get("final_val_top1_pct"),
                    "best_val_top1_pct": m.get("best_val_top1_pct"),
                    "best_val_top1_epoch": m.get("best_val_top1_epoch"),
                    "final_train_top1_pct": m.get("final_train_top1_pct"),
                    "wall_time_s": m.get("wall_time_s"),
                    "device": m.get("device_name"),
                    "finished": m.get("finished"),
                }
            )
        title = f"paper protocol so far (archive sequence {manifest.get('sequence')})"
        convergence_plot(by_model, args.out / "curves.png", title)
        layer_health_plot(by_model, args.out / "layer_health.png", title)
    for name, rows in (("curves.csv", curves), ("summary.csv", summary)):
        with open(args.out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print("| model | runs | epochs | final val top-1 % | best val top-1 % | best epoch |")
    print("|---|---|---|---|---|---|")
    for model in by_model:
        rows = [s for s in summary if s["model"] == model]
        final = mean_std([s["final_val_top1_pct"] for s in rows])
        best = mean_std([s["best_val_top1_pct"] for s in rows])
        print(
            f"| {model} | {len(rows)} | {'/'.join(str(s['epochs']) for s in rows)} "
            f"| {final[0]:.2f} ± {final[1]:.2f} | {best[0]:.2f} ± {best[1]:.2f} "
            f"| {'/'.join(str(s['best_val_top1_epoch']) for s in rows)} |"
        )
    print(
        f"wrote {args.out}/curves.csv, summary.csv, curves.png, layer_health.png", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
