"""Train one model from a Hydra config: ``python -m ssimlayer.train experiment=table1 [overrides]``.

Composes ``conf/train.yaml``, instantiates data, model, callbacks, loggers and trainer, and fits.
Everything the run produces lands in its Hydra run dir (``paths.output_dir``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from ssimlayer.lightning.callbacks import build_callbacks
from ssimlayer.lightning.checkpointing import (
    CheckpointMismatchError,
    check_checkpoint_matches,
    checkpoint_globals,
    find_resume_checkpoint,
)
from ssimlayer.lightning.console import print_summary, quiet_known_noise
from ssimlayer.lightning.loggers import build_loggers, finish_wandb
from ssimlayer.lightning.safety import NonFiniteLossError
from ssimlayer.memory import retain_freed_memory
from ssimlayer.utils import CONF_DIR, PROJECT_ROOT, register_resolvers, write_provenance
from ssimlayer.utils.config_checks import check_config
from ssimlayer.utils.paths import program_name

log = logging.getLogger(__name__)

register_resolvers()
quiet_known_noise()

#: Errors that mean "the config, the data or a checkpoint is wrong", each raised with a message that
#: says what and how to fix it: the entry point prints that message, not a traceback, and exits 2.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    CheckpointMismatchError,
    NonFiniteLossError,
    OmegaConfBaseException,
    InstantiationException,
    MisconfigurationException,  # Lightning's "these trainer settings do not go together"
)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``cfg.ckpt_path`` if set; else with ``resume=auto`` the newest unfinished run's last.ckpt."""
    resume = cfg.get("resume")
    if resume not in (None, "auto"):
        raise ValueError(f"resume must be null or auto, got {resume!r}")
    if cfg.get("ckpt_path") or resume is None:
        return cfg.get("ckpt_path")
    found = find_resume_checkpoint(
        cfg.paths.output_root, cfg.name, cfg.model.name, cfg.seed, exclude=cfg.paths.output_dir
    )
    if found is None:
        log.info(
            "resume=auto: no unfinished %s run of %s seed %s; starting fresh",
            cfg.name,
            cfg.model.name,
            cfg.seed,
        )
        return None
    log.info("resume=auto: resuming from %s", found)
    return str(found)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; return the ``metrics.json`` summary.

    Everything that can reject the config (the checks, the data, model and callback constructors)
    runs before the run's files and loggers are created.
    """
    check_config(cfg)
    if cfg.get("retain_freed_memory", False) and not retain_freed_memory():
        log.info("retain_freed_memory: not glibc's malloc here; the C library's default stays")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # before the model's initialisation
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # finds the dataset's files (or downloads them, if configured)
    model = instantiate(cfg.model)
    callbacks = build_callbacks(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    from_file = ckpt_path not in (None, "last", "hpc")  # Lightning's own names are not files
    if from_file:
        check_checkpoint_matches(ckpt_path, model, OmegaConf.to_container(cfg.model, resolve=True))
    write_provenance(cfg, cfg.paths.output_dir, PROJECT_ROOT)
    if from_file:
        (Path(cfg.paths.output_dir) / "resumed_from.txt").write_text(f"{ckpt_path}\n")
    loggers = build_loggers(cfg.get("logger"), fallback_dir=cfg.paths.output_dir)
    try:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        log.info(
            "Training %s on %s; run dir %s", cfg.model.name, cfg.data._target_, cfg.paths.output_dir
        )
        with checkpoint_globals():  # Lightning's resume loads weights-only, like ours
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        finish_wandb(loggers)
    summary = next((c for c in callbacks if hasattr(c, "write_json")), None)
    return summary.write_json(trainer, model, finished=True) if summary else {}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(cfg.paths.output_dir)
    try:
        metrics = train(cfg)
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report_error(e, run_dir)
        sys.exit(2)  # SystemExit passes through Hydra's handler, which would print a traceback
    if metrics:
        print_summary(metrics, run_dir)
    return metrics.get("best_val_top1_pct")  # for Hydra sweepers that optimise a return value


def _hydra_files_only(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what Hydra writes before a job starts (``.hydra/`` and the
    job's log): a run that stops with only these was rejected before it began."""
    return all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir())


def report_error(e: BaseException, run_dir: Path) -> None:
    """One short message on stderr instead of a traceback, kept in the run dir as ``error.txt``.

    A run dir that holds only Hydra's own files (the config was rejected before the run began) is
    removed, so that a typo leaves nothing behind; any other is kept as it is.
    """
    while isinstance(e, InstantiationException) and isinstance(e.__cause__, Exception):
        e = e.__cause__  # Hydra wraps errors raised in constructors; the cause says what is wrong
    msg = f"{type(e).__name__}: {e}"
    if run_dir.is_dir() and _hydra_files_only(run_dir):
        shutil.rmtree(run_dir)
        where = "nothing was written"
    else:
        (run_dir / "error.txt").write_text(msg + "\n")
        where = f"run dir {run_dir}, earlier outputs untouched"
    print(
        f"{program_name(sys.argv[0])}: error: {msg}\n({where}; HYDRA_FULL_ERROR=1 shows the full traceback)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
