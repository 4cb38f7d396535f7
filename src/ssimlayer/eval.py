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

import json
import logging
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ssimlayer.lightning.console import quiet_known_noise
from ssimlayer.memory import retain_freed_memory
from ssimlayer.robustness import corruption_sweep, default_specs, masking_checks, robustness_sweep
from ssimlayer.robustness.results import plot_attacks, plot_corruptions, summarise, write_csv
from ssimlayer.utils import CONF_DIR, register_resolvers
from ssimlayer.utils.paths import relative_to_root
from ssimlayer.utils.runs import Run, find_runs, in_percent

log = logging.getLogger(__name__)

register_resolvers()
quiet_known_noise()

#: Columns of robustness.csv and corruptions.csv: accuracies in percent.
ATTACK_COLS = ["attack", "eps", "steps", "top1_pct", "top5_pct"]
CORRUPTION_COLS = ["corruption", "severity", "top1_pct", "top5_pct"]


def find_eval_runs(runs: list[str], ckpt_path: str | None, weights: str = "last") -> list[Run]:
    """The runs to evaluate: ``ckpt_path``'s run (its checkpoint) and every run dir under ``runs``
    (run dirs, multirun dirs, globs) with its ``weights`` checkpoint."""
    found: list[Run] = []
    if ckpt_path:
        ckpt = Path(ckpt_path).expanduser().resolve()
        if not ckpt.is_file():
            raise ValueError(f"ckpt_path {ckpt_path!r} does not exist")
        found.append(Run(ckpt.parent.parent, ckpt))
    if runs:
        found += find_runs(runs, weights=weights)
    return found


def pair_up(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by seed: two different models of one seed form a pair; others go alone."""
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for r in runs:
        by_seed[r.seed].append(r)
    groups = []
    for group in by_seed.values():
        if len(group) == 2 and group[0].model != group[1].model:
            groups.append(sorted(group, key=lambda r: r.model))
        else:
            groups += [[r] for r in group]
    return groups


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
    runs = find_eval_runs(runs_arg, cfg.ckpt_path, ev.weights)
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
    sweep_kw = dict(
        num_examples=num_examples, device=cfg.device, seed=cfg.seed, progress=ev.progress
    )

    results = []
    for group in pair_up(runs):
        names = [f"{r.model}_seed{r.seed}" for r in group]
        log.info(
            "Evaluating %s on %s (%s images)", " vs ".join(names), ev.split, num_examples or "all"
        )
        models = {n: r.load_model(cfg.device) for n, r in zip(names, group, strict=True)}
        loader = group[0].eval_loader(ev.split, ev.batch_size, ev.num_workers)
        attack_rows = robustness_sweep(models, loader, specs, **sweep_kw)
        for name, run in zip(names, group, strict=True):
            rows = attack_rows[name]
            corr = corruption_sweep(models[name], loader, ev.corruptions, ev.severities, **sweep_kw)
            checks = masking_checks(rows, **ev.masking)  # on the fractions the sweeps return
            rows, corr = [in_percent(r) for r in rows], [in_percent(r) for r in corr]
            other = [r for r in group if r is not run]
            about = {"model": run.model, "seed": run.seed, "run_dir": relative_to_root(run.path)}
            masking = {
                **about,
                "checkpoint": relative_to_root(run.ckpt),
                "n_examples": rows[0]["n"],
                "transfer_source": relative_to_root(other[0].path) if other else None,
                "all_passed": all(c["verdict"] != "fail" for c in checks.values()),
                "checks": checks,
            }
            write_csv(run.path / "robustness.csv", rows, ATTACK_COLS)
            write_csv(run.path / "corruptions.csv", corr, CORRUPTION_COLS)
            (run.path / "masking_checks.json").write_text(json.dumps(masking, indent=2) + "\n")
            plot_attacks(run.path / "robustness.png", rows, name)
            plot_corruptions(run.path / "corruptions.png", corr, name)
            for r in rows:
                msg = "%s %s eps=%.4f steps=%d top-1 %.2f %%, top-5 %.2f %%"
                log.info(msg, name, *(r[c] for c in ATTACK_COLS))
            log.info(
                "%s corruptions mean top-1 %.2f %%; masking checks: %s",
                name,
                corr[-1]["top1_pct"],
                {k: c["verdict"] for k, c in checks.items()},
            )
            results.append({**about, "attacks": rows, "corruptions": corr, "masking": masking})

    summary_attacks = summarise(results, "attacks", ["attack", "eps", "steps"])
    summary_corr = summarise(results, "corruptions", ["corruption", "severity"])
    stat_cols = ["n_runs", "top1_pct_mean", "top1_pct_std", "top5_pct_mean", "top5_pct_std"]
    write_csv(
        out_dir / "summary_robustness.csv",
        summary_attacks,
        ["model", "attack", "eps", "steps", *stat_cols],
    )
    write_csv(
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
