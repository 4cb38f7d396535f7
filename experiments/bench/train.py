"""Training throughput of each paper model: the Lightning pipeline against a bare PyTorch loop.

    python experiments/bench/train.py [--models ...] [--batch-sizes 32 128] [--steps N] [--warmup W]
        [--repeats R] [--overhead] [--out outputs/bench/train.json] [Hydra overrides: debug=smoke ...]

The config is composed from conf/ (``train.yaml``) with the overrides, so ``data.root=...``,
``trainer=gpu_fast``, ``model.compile=true`` work as in ``python -m ssimlayer.train``. For each model
and batch size, both sides build the same network (same seed), the same optimiser (§3.1 SGD from
``conf/model``) and the same loader (``data.device_resident``; on by default on a GPU):

- Lightning: ``Trainer.fit`` as ``python -m ssimlayer.train`` runs it: the configured trainer
  (progress bar, ``log_every_n_steps``), the configured loggers (W&B offline and CSV by default) and
  the configured callbacks (``ssimlayer.lightning.build_callbacks``: resumable ``last.ckpt``, the
  NaN guard, the run summary, ...). Two differences, recorded in the JSON as ``lightning_differs``:
  no validation (``limit_val_batches=0``; the bare loop has none) and no FGSM sweep (it runs after
  ``fit``, outside the timed steps, and would attack the whole data set for every row).
- bare: ``for x, y in loader: zero_grad; cross_entropy(model(x), y).backward(); step``; autocast
  to bf16 when ``trainer.precision=bf16-mixed``; with ``model.cuda_graph=true`` on a GPU the same
  step through ``GraphedTrainStep``, as the Lightning side does. This is our floor.

Timing: ``W`` warm-up steps (compilation, cuDNN autotuning, allocator) are run and not timed, then
``N`` steps are timed (synchronising the device at both ends; they may cross an epoch boundary)
and scaled to one epoch, ``ceil(len(train split) / batch)`` steps: ``epoch_s = time / N * steps
per epoch``. ``N`` defaults to one epoch's steps (``trainer.limit_train_batches`` when set, as in
``debug=smoke``). With ``model.steps_per_execution=k`` Lightning's batch ends come every k steps,
so its timed span starts and ends at the first batch end at or after those steps and its time is
divided by the optimiser steps it really covered. With ``--repeats R`` the sides alternate R times
and each keeps its fastest run.
Target: ``lightning_over_bare <= 1.25``. Each row also gives ``overhead_ms_per_step``, the
Lightning time per step minus the bare one.
``--steps-per-execution 1,8`` times Lightning with each of those ``model.steps_per_execution``
values, alternating in one process with one bare loop, and writes a row for each.

``--overhead`` measures that per-step overhead with the compute made negligible: every layer one
filter wide, 8x8 images, batch 2 (unless ``--batch-sizes`` is given), on whatever device is
configured. On a CPU this is how the pipeline's own cost per step shows (with real widths the
model's compute hides it).

(``--replay-stand-in``, the host's cost per step around a no-op CUDA-graph replay on both sides,
was a one-off investigation; its findings are in experiments/bench/README.md and the script in
commit d3aebc9.)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ssimlayer import retain_freed_memory  # noqa: E402
from ssimlayer.data import DeviceLoader  # noqa: E402
from ssimlayer.lightning import build_callbacks, build_loggers  # noqa: E402
from ssimlayer.lightning.graphed_step import GraphedTrainStep  # noqa: E402
from ssimlayer.lightning.loggers import finish_wandb  # noqa: E402
from ssimlayer.utils import compose_config  # noqa: E402

MODELS = ["fig4_plain", "fig4_ssim", "fig4_ssim_norelu", "shallow_conv", "shallow_ssim"]
TARGET = 1.25
#: Callbacks of conf/callbacks left out of the Lightning side (see the docstring).
SKIPPED_CALLBACKS = ("fgsm_sweep",)
LIGHTNING_DIFFERS = (
    "no validation (limit_val_batches=0); no FGSM sweep callback (runs after fit, outside the "
    "timed steps)"
)


def compose_cfg(
    overrides: list[str], model: str, batch_size: int, device_resident: bool, out_dir: str
) -> DictConfig:
    return compose_config(
        config_name="train",
        overrides=[
            f"model={model}",
            *overrides,
            f"data.batch_size={batch_size}",
            f"data.device_resident={str(device_resident).lower()}",
            f"paths.output_dir={out_dir}",
        ],
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall time and optimiser steps from the first batch end at or after step ``warmup`` to the
    first at or after step ``warmup + steps`` (with ``steps_per_execution = k`` a batch end comes
    every k steps, so the timed span is rounded to whole groups and its step count recorded)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.t0 = self.t1 = self.step0 = self.step1 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.t0 is None and step >= self.warmup:
            sync(pl_module.device)
            self.t0, self.step0 = time.perf_counter(), step
        elif self.t1 is None and self.t0 is not None and step >= self.warmup + self.steps:
            sync(pl_module.device)
            self.t1, self.step1 = time.perf_counter(), step


def overhead_overrides(overrides: list[str], model: str) -> list[str]:
    """Overrides that shrink ``model`` to one filter per layer on 8x8 images (``--overhead``)."""
    probe = compose_cfg(overrides, model, 2, False, tempfile.gettempdir())
    ones = ",".join("1" for _ in probe.model.net.widths)
    return [
        *overrides,
        f"model.net.widths=[{ones}]",
        "data.image_size=8",
        "+model.net.input_size=8",
    ]


def time_lightning(
    cfg: DictConfig, warmup: int, steps: int, extra_callbacks: Sequence[pl.Callback] = ()
) -> tuple[float, list[str], str]:
    """Seconds per step over about ``steps`` steps after ``warmup`` (see
    :class:`StepTimer`), the names of the callbacks that ran and the trainer's profiler."""
    pl.seed_everything(cfg.seed)
    dm, model = instantiate(cfg.data), instantiate(cfg.model)
    timer = StepTimer(warmup, steps)
    callbacks = build_callbacks(cfg, skip=SKIPPED_CALLBACKS)
    loggers = build_loggers(cfg.get("logger"), fallback_dir=cfg.paths.output_dir)
    try:
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            callbacks=[*callbacks, *extra_callbacks, timer],
            logger=loggers or False,
            max_steps=warmup + steps + int(cfg.model.get("steps_per_execution", 1)),
            max_epochs=-1,
            limit_train_batches=None,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            fast_dev_run=False,
        )
        trainer.fit(model, datamodule=dm)
    finally:
        finish_wandb(loggers)
    if timer.t0 is None or timer.t1 is None:
        raise RuntimeError("bench: Lightning stopped before the timed steps were done")
    callbacks = [type(c).__name__ for c in trainer.callbacks]
    per_step = (timer.t1 - timer.t0) / (timer.step1 - timer.step0)
    return per_step, callbacks, type(trainer.profiler).__name__


def time_bare(cfg: DictConfig, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps after ``warmup``."""
    pl.seed_everything(cfg.seed)
    dm, model = instantiate(cfg.data), instantiate(cfg.model)
    dm.setup("fit")
    loader = dm.train_dataloader()
    if isinstance(loader, DeviceLoader):  # without a trainer it is built on the CPU
        loader = DeviceLoader(
            loader.images,
            loader.labels,
            loader.batch_size,
            sampler=loader.sampler,
            flip=loader.flip,
            device=device,
        )
    model.to(device).train()
    opt = model.configure_optimizers()
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "32", "bf16-mixed"):
        raise ValueError(f"bench: the bare loop supports 32-true and bf16-mixed, got {precision}")
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed", cache_enabled=False
    )

    def train_step(x, y):
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def zero_grad():
        opt.zero_grad(set_to_none=True)

    if cfg.model.get("cuda_graph", False) and device.type == "cuda":
        graphed = GraphedTrainStep(  # as ClassifierModule does
            lambda x, y: (None, train_step(x, y)), model.parameters(), cfg.model.cuda_graph_warmup
        )
    else:
        graphed = None
    step, epoch, t0 = 0, 0, None
    while step < warmup + steps:
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if graphed is not None:
                graphed(x, y)
            else:
                zero_grad()
                train_step(x, y)
            step += 1
            if step == warmup:
                sync(device)
                t0 = time.perf_counter()
            if step == warmup + steps:
                break
        epoch += 1
    sync(device)
    return (time.perf_counter() - t0) / steps


def timing_fields(light: float, bare: float, per_epoch: int) -> dict[str, float]:
    """The timing columns of a row from seconds per step of each side."""
    return {
        "lightning_epoch_s": round(light * per_epoch, 3),
        "bare_epoch_s": round(bare * per_epoch, 3),
        "lightning_over_bare": round(light / bare, 3),
        "lightning_step_ms": round(light * 1e3, 4),
        "bare_step_ms": round(bare * 1e3, 4),
        "overhead_ms_per_step": round((light - bare) * 1e3, 4),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: see the docstring)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps (0: 20, smoke 2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--steps-per-execution",
        type=lambda text: [int(k) for k in text.split(",")],
        default=None,
        metavar="K[,K...]",
        help="time Lightning with each of these model.steps_per_execution values (e.g. 1,8), "
        "alternating in one process with one bare loop (default: the configured value)",
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="one-filter layers, 8x8 images, batch 2: the pipeline's own cost per step",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cuda adds trainer=gpu unless a trainer is given",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "train.json")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown options {bad}")
    if args.device == "cuda" and not any(o.startswith("trainer=") for o in overrides):
        overrides = ["trainer=gpu", *overrides]
    batch_sizes = args.batch_sizes or ([2] if args.overhead else [32, 128])

    rows = []

    def write() -> None:  # after every model and batch size: a cut-short run keeps its rows
        result = {
            "overrides": overrides,
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "python": platform.python_version(),
            "target_ratio": TARGET,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            model_overrides = (
                overhead_overrides(overrides, model_name) if args.overhead else overrides
            )
            for bs in batch_sizes:
                probe = compose_cfg(model_overrides, model_name, bs, False, tmp)
                # As ssimlayer.train does, for both sides alike (process-wide, lasting).
                retained = bool(probe.get("retain_freed_memory")) and retain_freed_memory()
                on_gpu = probe.trainer.accelerator in ("gpu", "cuda")
                device = torch.device("cuda" if on_gpu else "cpu")
                resident = any(o.startswith("data.device_resident=") for o in overrides)
                resident = bool(probe.data.get("device_resident")) if resident else on_gpu
                cfg = compose_cfg(model_overrides, model_name, bs, resident, tmp)
                dm = instantiate(cfg.data)
                dm.setup("fit")
                per_epoch = math.ceil(len(dm.train_set) / bs)
                smoke = cfg.trainer.get("limit_train_batches") is not None
                steps = args.steps or (int(cfg.trainer.limit_train_batches) if smoke else per_epoch)
                warmup = args.warmup or (2 if smoke else 20)
                ks = args.steps_per_execution or [int(cfg.model.get("steps_per_execution", 1))]
                cfgs = {
                    k: compose_cfg(
                        [*model_overrides, f"model.steps_per_execution={k}"],
                        model_name,
                        bs,
                        resident,
                        tmp,
                    )
                    for k in ks
                }
                # Fastest repeat of each side.
                light, bare = dict.fromkeys(ks, math.inf), math.inf
                for _ in range(args.repeats):  # every k and the bare loop alternate
                    for k in ks:
                        t, callbacks, profiler = time_lightning(cfgs[k], warmup, steps)
                        light[k] = min(light[k], t)
                    bare = min(bare, time_bare(cfg, warmup, steps, device))
                setting = {
                    "steps_timed": steps,
                    "warmup_steps": warmup,
                    "steps_per_epoch": per_epoch,
                    "data_loader": (
                        "device_resident"
                        if resident
                        else f"DataLoader(num_workers={cfg.data.num_workers})"
                    ),
                    "precision": str(cfg.trainer.precision),
                    "compile": cfg.model.get("compile", False),
                    "cuda_graph": bool(cfg.model.get("cuda_graph", False)),
                    "channels_last": bool(cfg.model.get("channels_last", False)),
                    "overhead_mode": args.overhead,
                    "retain_freed_memory": retained,
                    "lightning_callbacks": callbacks,
                    "lightning_loggers": sorted(cfg.get("logger") or {}),
                    "lightning_profiler": profiler,
                    "lightning_differs": LIGHTNING_DIFFERS,
                }
                for k in ks:
                    row = {
                        "model": model_name,
                        "batch_size": bs,
                        "device": (
                            torch.cuda.get_device_name(device)
                            if on_gpu
                            else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
                        ),
                        **timing_fields(light[k], bare, per_epoch),
                        "steps_per_execution": k,
                        **setting,
                    }
                    rows.append(row)
                    ratio = row["lightning_over_bare"]
                    print(
                        f"{model_name:17s} b{bs:<4d} k{k:<3d} lightning "
                        f"{row['lightning_epoch_s']:9.2f} s/epoch  bare {row['bare_epoch_s']:9.2f} "
                        f"s/epoch  ratio {ratio:.2f}{'' if ratio <= TARGET else f' > {TARGET}'}  "
                        f"overhead {row['overhead_ms_per_step']:.3f} ms/step",
                        flush=True,
                    )
                write()

    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
