"""Checkpoints a killed run can resume from, finding them again, and refusing the wrong one.

- :class:`ResumeCheckpoint` keeps ``<run dir>/checkpoints/last.ckpt`` current, mid-epoch too (with
  the loader position, see :mod:`ssimlayer.data.resumable`). Each write goes to a temporary file
  renamed over ``last.ckpt``, so a SIGKILL while saving leaves the previous checkpoint intact.
- :func:`find_resume_checkpoint` picks the newest unfinished run of the same name, model and seed
  (``resume=auto``); :func:`check_checkpoint_matches` refuses one of another model.
- :func:`load_checkpoint` is the one way this project reads a checkpoint (weights-only).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Checkpoint

__all__ = [
    "ResumeCheckpoint",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "SAFE_GLOBALS",
    "checkpoint_globals",
    "load_checkpoint",
    "find_resume_checkpoint",
    "check_checkpoint_matches",
]

LAST = "last.ckpt"
#: With several processes, the time-based save is decided (by rank 0, broadcast) only every this
#: many steps: a broadcast is a collective, too costly for every step.
DIST_TIME_CHECK_EVERY = 50


class CheckpointMismatchError(ValueError):
    """A checkpoint holds weights of another model than the one configured."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds a type that loading would have to import and call: refused, not run."""


#: Types a checkpoint of this project may hold beyond what ``torch.load(weights_only=True)``
#: accepts by default (tensors, dicts, lists, tuples, strings, numbers, None, OrderedDict, dtypes,
#: devices). None today: every checkpoint that Lightning 2.6 writes for our runs (last, best,
#: mid-epoch and non-finite-loss ones, optimiser, loop and callback states) holds only those, as
#: ``tests/test_checkpoint_safety.py`` checks. A new state type goes here; weights-only loading is
#: never switched off.
SAFE_GLOBALS: list[Any] = []

_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


@contextlib.contextmanager
def checkpoint_globals() -> Iterator[None]:
    """Allow :data:`SAFE_GLOBALS` in ``weights_only`` loads inside the block (Lightning's resume)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        yield


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed.

    A checkpoint is a pickle, and an unrestricted unpickler runs whatever a crafted file asks
    for. This one builds only tensors and plain containers, so a colleague's run dir or a
    downloaded model is safe to point at.

    Raises:
        UnsafeCheckpointError: the file needs another type (named in the message); nothing in it
            has run.
    """
    try:
        with checkpoint_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _REFUSED_GLOBAL.search(str(e))
        what = (
            f"the type {found.group(1)}"
            if found
            else f"something torch's weights-only loader refuses ({str(e).strip().splitlines()[-1]})"
        )
        raise UnsafeCheckpointError(
            f"checkpoint {path}: refused to load {what}; nothing in the file has run. Checkpoints "
            f"of this project hold only tensors, containers and numbers, so this one comes from "
            f"another program or version, or was crafted to run code. Use a checkpoint from a "
            f"source you trust; if you trust this one and the type is harmless, add it to "
            f"ssimlayer.lightning.checkpointing.SAFE_GLOBALS"
        ) from None


class ResumeCheckpoint(Checkpoint):
    """Keep ``dirpath/last.ckpt`` current: every ``every_n_seconds`` and/or ``every_n_train_steps``
    mid-epoch, and at every epoch end.

    Resuming from any of them is exact (see :mod:`ssimlayer.data.resumable`), so the interval only
    sets how much work a kill can lose. A time interval keeps that bounded on any hardware: on a GPU
    100 steps take a fraction of a second, and writing a full checkpoint that often would cost more
    than the steps. The step checkpoints skip an epoch's last batch: the end-of-epoch one follows
    it, after validation and the epoch's summary row, which a resume must not lose.

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: save when the global step reaches a multiple of this (at the first
            batch end at or after it, with ``steps_per_execution > 1``); ``None`` or 0: never.
        every_n_seconds: save when this much time has passed since the last save (or the start of
            training); ``None``: never. With several processes rank 0's clock decides, looked at
            every ``DIST_TIME_CHECK_EVERY`` steps.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int | None = None,
        every_n_seconds: float | None = 120.0,
    ) -> None:
        for name, value in [
            ("every_n_train_steps", every_n_train_steps),
            ("every_n_seconds", every_n_seconds),
        ]:
            if value is not None and not value >= 0:
                raise ValueError(f"ResumeCheckpoint: {name} must be >= 0 or null, got {value}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_seconds = every_n_seconds
        self._last_saved_step = self._last_time_check = -1
        self._last_saved_time = time.monotonic()

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / f".{LAST}.partial"
        # the full state (optimiser, loops, callbacks) to resume from; said explicitly, since
        # Lightning otherwise logs that it chose so at every save
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.dirpath / LAST)  # atomic: a kill mid-save keeps the previous one
        self._last_saved_step = trainer.global_step
        self._last_saved_time = time.monotonic()

    def _time_due(self, trainer: pl.Trainer) -> bool:
        if self.every_n_seconds is None:
            return False
        if trainer.world_size == 1:
            return time.monotonic() - self._last_saved_time >= self.every_n_seconds
        step = trainer.global_step  # steps may advance several at a time (steps_per_execution)
        if step // DIST_TIME_CHECK_EVERY <= self._last_time_check // DIST_TIME_CHECK_EVERY:
            return False
        self._last_time_check = step
        due = time.monotonic() - self._last_saved_time >= self.every_n_seconds
        return bool(trainer.strategy.broadcast(due))  # the ranks must save together

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_saved_time = time.monotonic()
        self._last_saved_step = self._last_time_check = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        n, step = self.every_n_train_steps, trainer.global_step
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if step == self._last_saved_step or last_batch:
            return
        # a multiple of n reached since the last save: the global step advances several at a
        # time with steps_per_execution > 1, and may step over the multiple itself
        if (n and step // n > self._last_saved_step // n) or self._time_due(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)


def find_resume_checkpoint(
    output_root: str | Path, name: str, model: str, seed: int, exclude: str | Path | None = None
) -> Path | None:
    """The ``last.ckpt`` of the newest unfinished run ``outputs/<name>/{runs,multirun/*}/
    *_<model>_seed<seed>/``, or ``None``.

    A run is unfinished when its ``metrics.json`` is missing or says ``"finished": false``.
    ``exclude`` (the current run dir) is never chosen.
    """
    base = Path(output_root) / name
    suffix = f"_{model}_seed{seed}"
    dirs = [*base.glob(f"runs/*{suffix}"), *base.glob(f"multirun/*/*{suffix}")]
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for d in dirs:
        ckpt = d / "checkpoints" / LAST
        if not ckpt.is_file() or d.resolve() == skip:
            continue
        try:
            finished = json.loads((d / "metrics.json").read_text()).get("finished", False)
        except (OSError, ValueError):
            finished = False
        if not finished:
            found.append(ckpt)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _model_cfg_of(cfg_file: Path) -> dict[str, Any] | None:
    try:
        return (yaml.safe_load(cfg_file.read_text()) or {}).get("model")
    except (OSError, yaml.YAMLError):
        return None


def _describe(model_cfg: Any, name: str | None) -> str:
    if not isinstance(model_cfg, dict):
        return f"model={name}" if name else "an unknown model config"
    net = model_cfg.get("net") or {}
    detail = ", ".join(f"net.{k}={net[k]}" for k in ("widths", "kernel_sizes") if k in net)
    return f"model={model_cfg.get('name', name)}" + (f" ({detail})" if detail else "")


def check_checkpoint_matches(
    ckpt_path: str | Path, module: torch.nn.Module, model_cfg: dict[str, Any]
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``ckpt_path`` holds ``module``'s weights.

    Compares parameter names and shapes (what ``load_state_dict`` would reject), and says which
    model config the checkpoint came from (its run dir's ``config_resolved.yaml``) and how to
    resume it. ``FileNotFoundError`` when the file does not exist.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass ckpt_path=<run dir>/checkpoints/last.ckpt of "
            f"an earlier run, or resume=auto to pick the newest unfinished run of this "
            f"name/model/seed"
        )
    try:
        ckpt = load_checkpoint(path)
        state = ckpt["state_dict"]
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- any unreadable file gets the same advice
        raise CheckpointMismatchError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is truncated or not a "
            f"Lightning checkpoint of this project. Use another checkpoint or start without one"
        ) from e
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} of another shape (e.g. {k}: {got[k]} in the checkpoint, "
            f"{expected[k]} in this model)"
        )
    if not problems:
        return
    cfg_file = path.parent.parent / "config_resolved.yaml"  # <run dir>/checkpoints/<file>.ckpt
    ckpt_name = (ckpt.get("hyper_parameters") or {}).get("name")
    theirs = _describe(_model_cfg_of(cfg_file), ckpt_name)
    ours = _describe(model_cfg, model_cfg.get("name"))
    raise CheckpointMismatchError(
        f"checkpoint {path} was trained with {theirs}, but this run builds {ours}: its weights "
        f"do not fit ({'; '.join(problems)}). Resume it with the same model settings as that run "
        f"(see {cfg_file}), or drop ckpt_path/resume to start this model from scratch"
    )
