"""Loggers from config, with W&B offline by default and a CSV fallback when W&B cannot start."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

__all__ = ["build_loggers", "finish_wandb"]

log = logging.getLogger(__name__)


def build_loggers(cfg: Mapping[str, Any] | None, fallback_dir: str) -> list[Logger]:
    """Instantiate every entry of ``cfg`` (the ``logger`` config group).

    W&B never prompts: ``WANDB_SILENT`` is set, and an offline logger sets ``WANDB_MODE=offline``.
    If W&B fails to start, the run goes on with a :class:`CSVLogger` in ``fallback_dir`` and a
    warning says why.
    """
    loggers: list[Logger] = []
    for key, conf in (cfg or {}).items():
        if not conf or "_target_" not in conf:
            continue
        if "WandbLogger" in str(conf["_target_"]):
            os.environ.setdefault("WANDB_SILENT", "true")
            if conf.get("offline", False):
                os.environ["WANDB_MODE"] = "offline"
            try:
                logger = instantiate(conf)
                # Lightning passes anonymous=None, which W&B now warns about at every run
                # ("the anonymous setting has no effect"); leaving it out changes nothing else.
                logger._wandb_init.pop("anonymous", None)
                logger.experiment  # noqa: B018 -- start the run now, so failure surfaces here
            except Exception as e:  # noqa: BLE001 -- any W&B failure must not stop training
                msg = (
                    f"W&B logger {key!r} failed to start ({type(e).__name__}: {e}); "
                    f"continuing with CSV logging in {fallback_dir}"
                )
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                log.warning(msg)
                if not any(isinstance(lg, CSVLogger) for lg in loggers):
                    loggers.append(CSVLogger(fallback_dir, name="csv", version=""))
                continue
            loggers.append(logger)
        else:
            loggers.append(instantiate(conf))
    return loggers


def finish_wandb(loggers: list[Logger]) -> None:
    """Close any W&B run, so that the next run in this process (a multirun) starts a new one."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
