"""Training runs on disk: find their dirs, read what they wrote, summarise a quantity over seeds.

One :class:`Run` and one :func:`find_runs` serve every reader: the report (``make report``), the
robustness evaluation (``make robustness``) and filter pruning (``make prune``).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = ["Run", "find_runs", "in_percent", "mean_std", "percent", "read_csv"]

#: An accuracy column as runs before the unit was stated wrote it, a fraction under a bare name
#: (``top1``, ``val/top1``, ``final_val_top1``, ``clean_top5``); files now hold percent under
#: ``<name>_pct`` (``val/top1`` becomes ``val_top1_pct``, ``val/loss`` ``val_loss``).
_OLD_ACCURACY = re.compile(r"^((final|best)_)?((train|val|clean|fgsm)[_/])?top[15]$")


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts; ``[]`` when the file does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def in_percent(row: dict, keys: Iterable[str] = ("top1", "top5")) -> dict:
    """``row`` as files write it: each accuracy of ``keys`` (a fraction) in percent, as ``<key>_pct``.

    >>> in_percent({"eps": 0.007, "top1": 0.3252, "top5": 0.9})
    {'eps': 0.007, 'top1_pct': 32.52, 'top5_pct': 90.0}
    """
    keys = set(keys)
    return {
        (f"{k}_pct" if k in keys else k): (percent(v) if k in keys else v) for k, v in row.items()
    }


def percent(fraction) -> float | None:
    """A fraction as files write it: percent, rounded to 6 decimals (``None`` for no value)."""
    return None if fraction in (None, "") else round(100 * float(fraction), 6)


def _current(row: dict) -> dict:
    """A row read from a run's file, with accuracies in percent under ``*_pct`` names whatever
    version of the pipeline wrote it (see :data:`_OLD_ACCURACY`)."""
    out = {}
    for k, v in row.items():
        if _OLD_ACCURACY.match(k):
            out[k.replace("/", "_") + "_pct"] = percent(v)
        elif k.endswith("/loss"):
            out[k.replace("/", "_")] = v
        else:
            out[k] = v
    return out


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) over seeds, NaN values left out.

    The standard deviation of a single value is unknown, so it is NaN (not 0); no values give
    ``(nan, nan)``.

        >>> mean_std([0.5, 0.7]), mean_std([0.5])
        ((0.6, 0.14142135623730948), (0.5, nan))
    """
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class Run:
    """One training run dir and what it wrote there (each file read on first use).

    Args:
        path: the run dir (``outputs/<experiment>/.../<job>_<model>_seed<seed>``).
        ckpt: the checkpoint chosen for evaluation (see :func:`find_runs`), if any.
    """

    path: Path
    ckpt: Path | None = None

    @cached_property
    def metrics(self) -> dict:
        """``metrics.json``, accuracies in percent (``final_val_top1_pct``, ...)."""
        return _current(_load_json(self.path / "metrics.json") or {})

    @cached_property
    def epochs(self) -> list[dict]:
        """``epochs.csv``'s rows, accuracies in percent (``val_top1_pct``, ...)."""
        return self.table("epochs.csv")

    @cached_property
    def fgsm(self) -> list[dict]:
        """``fgsm_sweep.csv``'s rows (``split, eps, top1_pct, top5_pct``)."""
        return self.table("fgsm_sweep.csv")

    def table(self, name: str) -> list[dict]:
        """The rows of the run's CSV file ``name`` (``[]`` if absent), accuracies in percent."""
        return [_current(row) for row in read_csv(self.path / name)]

    @cached_property
    def filters(self) -> dict | None:
        return _load_json(self.path / "filters_norms.json")

    @cached_property
    def provenance(self) -> dict | None:
        return _load_json(self.path / "provenance.json")

    @cached_property
    def cfg(self) -> DictConfig:
        """The run's resolved training config (to rebuild its model and data)."""
        for name in ("config_resolved.yaml", ".hydra/config.yaml"):
            if (self.path / name).is_file():
                return OmegaConf.load(self.path / name)
        raise ValueError(
            f"run dir {str(self.path)!r} has no config_resolved.yaml or .hydra/config.yaml"
        )

    @property
    def finished(self) -> bool:
        return bool(self.metrics.get("finished")) and "model" in self.metrics

    @property
    def model(self) -> str:
        if "model" in self.metrics:
            return str(self.metrics["model"])
        try:
            return str(self.cfg.model.get("name", self.path.name))
        except ValueError:
            return "?"

    @property
    def seed(self) -> int | None:
        if "seed" in self.metrics:
            return self.metrics["seed"]
        try:
            return self.cfg.get("seed")
        except ValueError:
            return None

    @property
    def schedule(self) -> str:
        return self.metrics.get("schedule", "unknown")

    @property
    def synthetic(self) -> bool:
        return "Synthetic" in str(self.metrics.get("data", ""))

    def fgsm_top(self, split: str, eps: float, k: int) -> float | None:
        """Top-``k`` accuracy (%) under FGSM at ``eps`` on ``split``."""
        for row in self.fgsm:
            if row["split"] == split and abs(float(row["eps"]) - eps) < 1e-9:
                value = row.get(f"top{k}_pct")
                return None if value in (None, "") else float(value)
        return None

    @property
    def train_images(self) -> int | None:
        """How many training images the run used: ``metrics.json``'s ``train_images`` if written,
        else from its config (CIFAR-10's ``train_batches`` files of 10,000, or a synthetic set's
        ``num_train``)."""
        if self.metrics.get("train_images") is not None:
            return int(self.metrics["train_images"])
        try:
            data = self.cfg.data
        except ValueError:
            return None
        if "CIFAR10" in str(data.get("_target_", "")) and data.get("train_batches"):
            return 10_000 * len(data["train_batches"])
        return int(data["num_train"]) if "num_train" in data else None

    @property
    def device(self) -> str:
        """Where it trained: the accelerator Lightning used (older runs' "device" field names the
        module's device after fit, when Lightning has moved it back to the CPU)."""
        accelerator = str(self.metrics.get("accelerator", ""))
        if "CUDA" in accelerator:
            return self.metrics.get("device_name") or "cuda"
        return str(self.metrics.get("device", "?"))

    @property
    def commit(self) -> str:
        git = (self.provenance or {}).get("git", {})
        sha = str(git.get("sha", "?"))[:8]
        return sha + ("+dirty" if git.get("dirty") else "")

    def load_model(self, device: str = "cpu") -> nn.Module:
        """The run's network (``ClassifierModule.net``) rebuilt from its config, with the weights
        of ``ckpt`` (default: ``checkpoints/last.ckpt``), loaded weights-only, in eval mode."""
        from hydra.utils import instantiate

        from ssimlayer.lightning.checkpointing import load_checkpoint

        module = instantiate(self.cfg.model)
        state = load_checkpoint(self.ckpt or self.checkpoint("last"), map_location=device)
        module.load_state_dict(state["state_dict"] if "state_dict" in state else state)
        return getattr(module, "net", module).to(device).eval()

    def eval_loader(self, split: str = "val", batch_size: int = 100, num_workers: int = 0):
        """A loader of the run's own data ``split`` without augmentation, in a fixed order."""
        from hydra.utils import instantiate

        data_cfg = OmegaConf.merge(
            self.cfg.data, {"batch_size": batch_size, "num_workers": num_workers}
        )
        datamodule = instantiate(data_cfg)
        datamodule.setup("fit")
        return datamodule.eval_dataloader(split)

    def checkpoint(self, weights: str = "last") -> Path:
        """``checkpoints/last.ckpt`` (``"last"``) or the best val top-1 one (``"best"``)."""
        ckpts = self.path / "checkpoints"
        if weights == "last":
            path = ckpts / "last.ckpt"
        elif weights == "best":
            best = sorted(ckpts.glob("best-*.ckpt"))
            path = best[-1] if best else ckpts / "best-*.ckpt"
        else:
            raise ValueError(f"weights must be 'last' or 'best', got {weights!r}")
        if not path.is_file():
            raise ValueError(f"no checkpoint {str(path)!r} in run dir {str(self.path)!r}")
        return path


def _run_dirs(root: Path) -> list[Path]:
    """``root`` itself if it is a run dir, else every run dir below it (any depth)."""
    marks = ("metrics.json", "checkpoints")
    if any((root / m).exists() for m in marks):
        return [root]
    found = {p.parent for m in marks for p in root.rglob(m)}
    return sorted(p for p in found if not any(a in found for a in p.parents))


def find_runs(
    paths: str | Path | Iterable[str | Path],
    *,
    finished: bool = False,
    include_synthetic: bool = True,
    weights: str | None = None,
    required: bool = True,
) -> list[Run]:
    """Every run dir under ``paths``: run dirs, multirun dirs, output roots, or globs of them.

    Args:
        paths: one path or several; ``~`` and glob patterns are expanded.
        finished: only runs whose ``metrics.json`` says they finished (what the report counts).
        include_synthetic: also runs on synthetic data (smoke runs).
        weights: ``"last"`` or ``"best"``: pick each run's checkpoint (``Run.ckpt``); a run
            without one is an error that names it.
        required: a path that holds no run dir is an error (else it adds none).

    Raises:
        ValueError: a path that does not exist, or (``required``) holds no run dir.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs: list[Run] = []
    for pattern in paths:
        for m in sorted(glob.glob(os.path.expanduser(str(pattern)))) or [str(pattern)]:
            root = Path(m).resolve()
            if not root.is_dir():
                raise ValueError(f"run dir {str(pattern)!r} does not exist")
            dirs = _run_dirs(root)
            if not dirs and required:
                raise ValueError(
                    f"{str(pattern)!r} is neither a run dir (with metrics.json or checkpoints/) "
                    f"nor a folder holding run dirs"
                )
            runs += [Run(d) for d in dirs]
    if finished:
        runs = [r for r in runs if r.finished]
    if not include_synthetic:
        runs = [r for r in runs if not r.synthetic]
    if weights is not None:
        for run in runs:
            run.ckpt = run.checkpoint(weights)
    return runs
