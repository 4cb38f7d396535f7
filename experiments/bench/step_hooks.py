"""Host time of a manual optimiser step: StepHooks against Lightning's own calls, in one process.

    python experiments/bench/step_hooks.py [--models ...] [--k 8 16] [--epochs 12]
        [--out outputs/bench/step_hooks.json] [Hydra overrides]

With ``model.steps_per_execution=k > 1`` (or ``model.cuda_graph=true``) ``ClassifierModule`` runs
its optimiser steps itself. On one device in 32-bit or bf16 precision it calls the backward and
optimiser hooks through ``ssimlayer.lightning.step_hooks.StepHooks``
(``ClassifierModule._backward_and_step``); elsewhere through Lightning's ``manual_backward`` and
``LightningOptimizer.step``. This bench trains the ``--overhead`` model of the training bench
(one-filter layers, 8x8 images, batch 2: the host's work shows) and switches between the two ways
every epoch, so both run in one process on the same warm state; each Lightning iteration (batch
start to batch end, k optimiser steps) is timed and divided by its steps; the first epoch is not
timed. The difference of the medians is what StepHooks
saves per step. Runs on any device; on a CPU the step's compute is part of both numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from experiments.bench import train as train_bench  # noqa: E402

WAYS = ("step_hooks", "lightning")
BATCH = 2  # the training bench's --overhead batch


class Alternate(pl.Callback):
    """Alternate epochs through StepHooks and through Lightning's calls; records the host time of
    each iteration per optimiser step, from the second epoch on."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {way: [] for way in WAYS}
        self.way = WAYS[0]
        self._hooks = None
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._hooks is None:  # the module sets them up after the callbacks' on_train_start
            self._hooks = pl_module._step_hooks
            if self._hooks is None:
                raise RuntimeError(
                    "bench: this trainer runs Lightning's own manual steps (not one device in "
                    "32-bit or bf16 precision, or steps_per_execution=1): nothing to compare"
                )
        # Epoch 0 (warm-up, not timed) through StepHooks, then Lightning, StepHooks, ...
        self.way = WAYS[(trainer.current_epoch + 1) % 2] if trainer.current_epoch else WAYS[0]
        pl_module._step_hooks = self._hooks if self.way == "step_hooks" else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch >= 1:
            steps = len(batch) if isinstance(batch, list) else 1
            self.times[self.way].append((time.perf_counter() - self._start) / steps)


def measure(overrides: list[str], model: str, k: int, epochs: int, out_dir: str) -> dict:
    cfg = train_bench.compose_cfg(
        [*train_bench.overhead_overrides(overrides, model), f"model.steps_per_execution={k}"],
        model,
        BATCH,
        True,
        out_dir,
    )
    steps_per_epoch = math.ceil(cfg.data.num_train / BATCH)
    alternate = Alternate()
    train_bench.time_lightning(cfg, 1, epochs * steps_per_epoch - 1 - k, [alternate])
    medians = {way: statistics.median(alternate.times[way]) * 1e6 for way in WAYS}
    return {
        "model": model,
        "steps_per_execution": k,
        "steps_per_epoch": steps_per_epoch,
        "groups_timed": {way: len(alternate.times[way]) for way in WAYS},
        "step_hooks_us_per_step": round(medians["step_hooks"], 1),
        "lightning_us_per_step": round(medians["lightning"], 1),
        "saved_us_per_step": round(medians["lightning"] - medians["step_hooks"], 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fig4_plain", "fig4_ssim", "shallow_ssim"])
    parser.add_argument("--k", nargs="+", type=int, default=[8, 16])
    parser.add_argument(
        "--epochs", type=int, default=13, help="odd: one untimed, then as many of each way"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "step_hooks.json")
    args, overrides = parser.parse_known_args(argv)
    if args.epochs < 3 or args.epochs % 2 == 0:
        parser.error("--epochs must be odd and >= 3 (the first is not timed)")
    if any(k < 2 for k in args.k):
        parser.error("--k values must be >= 2 (k = 1 runs Lightning's automatic optimisation)")
    overrides = ["data=synthetic", "data.device_resident=true", "data.num_train=1024", *overrides]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for k in args.k:
                row = measure(overrides, model, k, args.epochs, tmp)
                rows.append(row)
                print(
                    f"{model:14s} k{k:<3d} StepHooks {row['step_hooks_us_per_step']:8.0f} us/step  "
                    f"Lightning {row['lightning_us_per_step']:8.0f} us/step  saved "
                    f"{row['saved_us_per_step']:6.0f}",
                    flush=True,
                )
    result = {
        "what": "training_step host time per optimiser step, median over the timed groups; "
        "StepHooks and Lightning's manual_backward/optimizer.step alternate by epoch",
        "overrides": overrides,
        "device": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
