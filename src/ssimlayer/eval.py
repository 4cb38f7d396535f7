"""Robustness of trained checkpoints: ``python -m ssimlayer.eval runs=[<run dir>,...]``.

``make robustness`` runs it. Composes ``conf/eval.yaml``, rebuilds each run's model from its
``config_resolved.yaml``, loads the checkpoint, and writes into every run dir ``robustness.csv``
(FGSM, PGD-10/50, Square, PGD transferred from the other model of the pair), ``corruptions.csv``
(Fig. 1's noise and JPEG at CIFAR-10-C severities), ``masking_checks.json`` and two plots. The job
dir (``outputs/robustness/<ts>/``) gets the mean and std over seeds per model
(``summary_robustness.csv``, ``summary_corruptions.csv``), ``summary_masking.json`` and an
offline W&B run with the tables.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ssimlayer.lightning.checkpointing import load_checkpoint
from ssimlayer.memory import retain_freed_memory
from ssimlayer.robustness import corruption_sweep, default_specs, masking_checks, robustness_sweep
from ssimlayer.utils import CONF_DIR, register_resolvers

log = logging.getLogger(__name__)

register_resolvers()

ATTACK_COLS = ["attack", "eps", "steps", "top1", "top5"]
CORRUPTION_COLS = ["corruption", "severity", "top1", "top5"]


@dataclass
class Run:
    """A trained run: its dir, the checkpoint to evaluate and its resolved train config."""

    dir: Path
    ckpt: Path
    cfg: DictConfig

    @property
    def model_name(self) -> str:
        return str(self.cfg.model.get("name", self.dir.name))

    @property
    def seed(self) -> int | None:
        return self.cfg.get("seed")


def _run_config(run_dir: Path) -> DictConfig:
    for name in ("config_resolved.yaml", ".hydra/config.yaml"):
        if (run_dir / name).is_file():
            return OmegaConf.load(run_dir / name)
    raise ValueError(f"run dir {str(run_dir)!r} has no config_resolved.yaml or .hydra/config.yaml")


def _checkpoint(run_dir: Path, weights: str) -> Path:
    ckpts = run_dir / "checkpoints"
    if weights == "last":
        path = ckpts / "last.ckpt"
    elif weights == "best":
        best = sorted(ckpts.glob("best-*.ckpt"))
        path = best[-1] if best else ckpts / "best-*.ckpt"
    else:
        raise ValueError(f"eval.weights must be 'last' or 'best', got {weights!r}")
    if not path.is_file():
        raise ValueError(f"no checkpoint {str(path)!r} in run dir {str(run_dir)!r}")
    return path


def find_runs(runs: list[str], ckpt_path: str | None, weights: str = "last") -> list[Run]:
    """Expand run dirs, globs and multirun dirs (their subdirs holding ``checkpoints/``)."""
    found: list[Run] = []
    if ckpt_path:
        ckpt = Path(ckpt_path).expanduser().resolve()
        if not ckpt.is_file():
            raise ValueError(f"ckpt_path {ckpt_path!r} does not exist")
        found.append(Run(ckpt.parent.parent, ckpt, _run_config(ckpt.parent.parent)))
    for pattern in runs:
        matches = sorted(glob.glob(os.path.expanduser(str(pattern)))) or [str(pattern)]
        for m in matches:
            path = Path(m).resolve()
            if not path.is_dir():
                raise ValueError(f"run dir {str(pattern)!r} does not exist")
            dirs = (
                [path]
                if (path / "checkpoints").is_dir()
                else sorted(p.parent for p in path.glob("*/checkpoints") if p.is_dir())
            )
            if not dirs:
                raise ValueError(
                    f"{str(pattern)!r} is neither a run dir (with checkpoints/) nor "
                    f"a multirun dir holding run dirs"
                )
            found += [Run(d, _checkpoint(d, weights), _run_config(d)) for d in dirs]
    return found


def load_model(run: Run, device: str = "cpu") -> nn.Module:
    """The run's network (``ClassifierModule.net``) rebuilt from its config, with the checkpoint's
    weights, in eval mode."""
    module = instantiate(run.cfg.model)
    state = load_checkpoint(run.ckpt, map_location=device)
    module.load_state_dict(state["state_dict"] if "state_dict" in state else state)
    net = getattr(module, "net", module)
    return net.to(device).eval()


def pair_up(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by seed: two different models of one seed form a pair; others go alone."""
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for r in runs:
        by_seed[r.seed].append(r)
    groups = []
    for group in by_seed.values():
        if len(group) == 2 and group[0].model_name != group[1].model_name:
            groups.append(sorted(group, key=lambda r: r.model_name))
        else:
            groups += [[r] for r in group]
    return groups


def val_loader(run: Run, ev: DictConfig):
    data_cfg = OmegaConf.merge(
        run.cfg.data, {"batch_size": ev.batch_size, "num_workers": ev.num_workers}
    )
    datamodule = instantiate(data_cfg)
    datamodule.setup("fit")
    return datamodule.eval_dataloader(ev.split)


def _debug_choice() -> str | None:
    """The ``debug`` group chosen on the command line (``debug=smoke``), if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get("debug")
    return None if choice in (None, "null") else str(choice)


def train_smoke_pair(cfg: DictConfig, debug: str, out_dir: Path) -> list[str]:
    """Train the models of ``eval.pair`` (``experiment=table1 debug=<debug>``), in-process."""
    from hydra import compose

    from ssimlayer.train import train

    dirs = []
    for i, model in enumerate(cfg.eval.pair):
        run_dir = out_dir / "train" / f"{i}_{model}_seed{cfg.seed}"
        train_cfg = compose(
            "train",
            overrides=[
                "experiment=table1",
                f"debug={debug}",
                f"model={model}",
                f"seed={cfg.seed}",
                "logger=csv",
                f"paths.output_dir={run_dir}",
            ],
        )
        log.info("Training smoke model %s in %s", model, run_dir)
        train(train_cfg)
        dirs.append(str(run_dir))
    return dirs


def _write_csv(path: Path, rows: list[dict], cols: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _plot_attacks(path: Path, rows: list[dict], title: str) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    clean = next((r["top1"] for r in rows if r["attack"] == "clean"), None)
    for r in rows:
        if r["attack"] != "clean":
            series[f"{r['attack']}-{r['steps']}"].append((r["eps"], r["top1"]))
    for label, pts in series.items():
        pts = sorted(([(0.0, clean)] if clean is not None else []) + pts)
        ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set(xlabel="eps ([0, 1] pixel units)", ylabel="top-1 accuracy", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _plot_corruptions(path: Path, rows: list[dict], title: str) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    clean = next(r["top1"] for r in rows if r["corruption"] == "clean")
    names = [n for n in dict.fromkeys(r["corruption"] for r in rows) if n not in ("clean", "mean")]
    for n in names:
        pts = [(0, clean)] + [(r["severity"], r["top1"]) for r in rows if r["corruption"] == n]
        ax.plot(*zip(*pts, strict=True), marker="o", label=n)
    ax.set(
        xlabel="CIFAR-10-C severity (0 = clean)", ylabel="top-1 accuracy", ylim=(0, 1), title=title
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict], kind: str, keys: list[str]) -> list[dict]:
    """Mean ± std over runs (seeds) per model and row key."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for res in results:
        for r in res[kind]:
            groups[(res["model"], *(r[k] for k in keys))].append(r)
    out = []
    for key, rows in groups.items():
        row = {"model": key[0], **dict(zip(keys, key[1:], strict=True)), "n_runs": len(rows)}
        for m in ("top1", "top5"):
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([float(r[m]) for r in rows])
        out.append(row)
    return out


def _log_wandb(cfg: DictConfig, out_dir: Path, tables: dict[str, list[dict]]) -> None:
    if not cfg.wandb.enabled:
        return
    try:
        os.environ.setdefault("WANDB_SILENT", "true")
        if cfg.wandb.offline:
            os.environ["WANDB_MODE"] = "offline"
        import wandb

        run = wandb.init(
            project=cfg.wandb.project,
            dir=str(out_dir),
            job_type="robustness",
            group=cfg.name,
            config=OmegaConf.to_container(cfg.eval, resolve=True),
        )
        for key, rows in tables.items():
            if rows:
                cols = list(rows[0])
                data = [[r.get(c) for c in cols] for r in rows]
                run.log({key: wandb.Table(columns=cols, data=data, allow_mixed_types=True)})
        for png in out_dir.glob("*.png"):
            run.log({f"plots/{png.stem}": wandb.Image(str(png))})
        run.finish()
    except Exception as e:  # noqa: BLE001 -- the CSVs are written; W&B is a convenience
        msg = f"W&B logging failed ({type(e).__name__}: {e}); results are in {out_dir} and run dirs"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every run of ``cfg.runs`` / ``cfg.ckpt_path``; return the summary rows."""
    if cfg.get("retain_freed_memory", False) and not retain_freed_memory():
        log.info("retain_freed_memory: not glibc's malloc here; the C library's default stays")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = cfg.eval
    debug = _debug_choice()
    if debug:
        ev = OmegaConf.merge(ev, ev.smoke)
    runs_arg = list(cfg.runs or [])
    if not runs_arg and not cfg.ckpt_path:
        if not debug:
            raise ValueError(
                "nothing to evaluate: give runs=[<run dir>,...] or ckpt_path=<ckpt> "
                "(or debug=smoke to train the smoke pair first)"
            )
        runs_arg = train_smoke_pair(cfg, debug, out_dir)
    runs = find_runs(runs_arg, cfg.ckpt_path, ev.weights)
    specs = default_specs(
        eps=ev.eps,
        pgd_steps=ev.pgd_steps,
        square_eps=ev.square_eps,
        square_queries=ev.square_queries,
        large_eps=ev.large_eps,
        transfer_steps=ev.transfer_steps,
    )
    num_examples = ev.num_examples
    if ev.max_batches is not None:
        cap = ev.max_batches * ev.batch_size
        num_examples = cap if num_examples is None else min(num_examples, cap)

    results = []
    for group in pair_up(runs):
        names = [f"{r.model_name}_seed{r.seed}" for r in group]
        log.info(
            "Evaluating %s on %s (%s images)", " vs ".join(names), ev.split, num_examples or "all"
        )
        models = {n: load_model(r, cfg.device) for n, r in zip(names, group, strict=True)}
        loader = val_loader(group[0], ev)
        attack_rows = robustness_sweep(
            models,
            loader,
            specs,
            num_examples=num_examples,
            device=cfg.device,
            seed=cfg.seed,
            progress=ev.progress,
        )
        for name, run in zip(names, group, strict=True):
            rows = attack_rows[name]
            corr = corruption_sweep(
                models[name],
                loader,
                ev.corruptions,
                ev.severities,
                num_examples=num_examples,
                device=cfg.device,
                seed=cfg.seed,
                progress=ev.progress,
            )
            checks = masking_checks(rows, **ev.masking)
            other = [r for r in group if r is not run]
            masking = {
                "model": run.model_name,
                "seed": run.seed,
                "run_dir": str(run.dir),
                "checkpoint": str(run.ckpt),
                "n_examples": rows[0]["n"],
                "transfer_source": str(other[0].dir) if other else None,
                "all_passed": all(c["verdict"] != "fail" for c in checks.values()),
                "checks": checks,
            }
            _write_csv(run.dir / "robustness.csv", rows, ATTACK_COLS)
            _write_csv(run.dir / "corruptions.csv", corr, CORRUPTION_COLS)
            (run.dir / "masking_checks.json").write_text(json.dumps(masking, indent=2) + "\n")
            _plot_attacks(run.dir / "robustness.png", rows, name)
            _plot_corruptions(run.dir / "corruptions.png", corr, name)
            for r in rows:
                log.info(
                    "%s %s eps=%.4f steps=%d top1=%.4f top5=%.4f",
                    name,
                    r["attack"],
                    r["eps"],
                    r["steps"],
                    r["top1"],
                    r["top5"],
                )
            log.info(
                "%s corruptions mean top1=%.4f; masking checks: %s",
                name,
                corr[-1]["top1"],
                {k: c["verdict"] for k, c in checks.items()},
            )
            results.append(
                {
                    "model": run.model_name,
                    "seed": run.seed,
                    "run_dir": str(run.dir),
                    "attacks": rows,
                    "corruptions": corr,
                    "masking": masking,
                }
            )

    summary_attacks = summarise(results, "attacks", ["attack", "eps", "steps"])
    summary_corr = summarise(results, "corruptions", ["corruption", "severity"])
    stat_cols = ["n_runs", "top1_mean", "top1_std", "top5_mean", "top5_std"]
    _write_csv(
        out_dir / "summary_robustness.csv",
        summary_attacks,
        ["model", "attack", "eps", "steps", *stat_cols],
    )
    _write_csv(
        out_dir / "summary_corruptions.csv",
        summary_corr,
        ["model", "corruption", "severity", *stat_cols],
    )
    (out_dir / "summary_masking.json").write_text(
        json.dumps([r["masking"] for r in results], indent=2) + "\n"
    )
    tables = {"summary/robustness": summary_attacks, "summary/corruptions": summary_corr}
    for res in results:
        key = f"{res['model']}_seed{res['seed']}"
        tables[f"{key}/robustness"] = [{c: r[c] for c in ATTACK_COLS} for r in res["attacks"]]
        tables[f"{key}/corruptions"] = [
            {c: r[c] for c in CORRUPTION_COLS} for r in res["corruptions"]
        ]
    _log_wandb(cfg, out_dir, tables)
    log.info(
        "Robustness results in %s and the run dirs %s", out_dir, [r["run_dir"] for r in results]
    )
    return {"out_dir": str(out_dir), "results": results, "summary": summary_attacks}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
