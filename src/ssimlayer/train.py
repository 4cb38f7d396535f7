"""Train one model from a Hydra config: ``python -m ssimlayer.train experiment=table1 [overrides]``.

Composes ``conf/train.yaml``, instantiates data, model, callbacks, loggers and trainer, and fits.
Everything the run produces lands in its Hydra run dir (``paths.output_dir``).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ssimlayer.lightning.loggers import build_loggers, finish_wandb
from ssimlayer.utils import CONF_DIR, PROJECT_ROOT, register_resolvers, write_provenance

log = logging.getLogger(__name__)

register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; return the ``metrics.json`` summary."""
    pl.seed_everything(cfg.seed, workers=True)
    write_provenance(cfg, cfg.paths.output_dir, PROJECT_ROOT)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()
                 if c and "_target_" in c]
    loggers = build_loggers(cfg.get("logger"), fallback_dir=cfg.paths.output_dir)
    try:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks,
                                          logger=loggers or False)
        log.info("Training %s on %s; run dir %s", cfg.model.name, cfg.data._target_,
                 cfg.paths.output_dir)
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    finally:
        finish_wandb(loggers)
    summary = next((c for c in callbacks if hasattr(c, "write_json")), None)
    return summary.write_json(trainer, model, finished=True) if summary else {}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("best_val_top1")  # for Hydra sweepers that optimise a return value


if __name__ == "__main__":
    main()
