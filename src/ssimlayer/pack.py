"""Train several runs of one model config as one pack: ``python -m ssimlayer.pack seeds=[0,1,2]``.

Composes ``conf/pack.yaml`` (``conf/train.yaml`` plus ``seeds``), builds each member as
``ssimlayer.train`` builds a run (``seed_everything(seed)``, then data, then model), packs them
(:class:`ssimlayer.lightning.pack.PackedClassifierModule`) and fits. Member ``i`` writes
``<pack dir>/<i>_<model>_seed<seed>/`` with its own config: the solo run it reproduces is
``python -m ssimlayer.train <same overrides> seed=<seed> data.device_resident=true``.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ssimlayer.lightning.callbacks import build_callbacks
from ssimlayer.lightning.checkpointing import check_checkpoint_matches, checkpoint_globals
from ssimlayer.lightning.console import print_summary
from ssimlayer.lightning.fgsm_sweep import FGSMSweep
from ssimlayer.lightning.filters import FilterVisualisation
from ssimlayer.lightning.layer_health import LayerHealth
from ssimlayer.lightning.pack import PackedClassifierModule, PackedDataModule, PackMembers
from ssimlayer.lightning.run_summary import RunSummary
from ssimlayer.train import USER_ERRORS, report_error
from ssimlayer.utils import CONF_DIR, PROJECT_ROOT, register_resolvers, write_provenance
from ssimlayer.utils.config_checks import check_config

log = logging.getLogger(__name__)

register_resolvers()

#: The callbacks each member runs for itself (through PackMembers); the pack keeps the others.
MEMBER_CALLBACKS = ("run_summary", "filters", "fgsm_sweep", "model_checkpoint", "layer_health")
#: The pack's own checkpoints (resume with ckpt_path=<pack dir>/pack_checkpoints/last.ckpt); not
#: checkpoints/, which would make ssimlayer.eval take the pack dir for a run dir.
PACK_CHECKPOINTS = "pack_checkpoints"


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per seed: ``seed`` set, its own run dir under the pack's, data on the device."""
    seeds = list(cfg.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {seeds}")
    out = Path(cfg.paths.output_dir)
    configs = []
    for i, seed in enumerate(seeds):
        c = copy.deepcopy(cfg)
        OmegaConf.set_struct(c, False)
        c.seed = int(seed)
        c.paths.output_dir = str(out / f"{i}_{cfg.model.name}_seed{seed}")
        c.data.device_resident = True  # the pack draws each member's order and flips so
        extra = c.callbacks.run_summary.extra
        extra.pack_dir, extra.pack_member, extra.pack_members = str(out), i, len(seeds)
        del c["seeds"]
        configs.append(c)
    return configs


def _pick(callbacks: list[pl.Callback], kind: type) -> Any:
    return next((c for c in callbacks if isinstance(c, kind)), None)


def train_pack(cfg: DictConfig) -> list[dict[str, Any]]:
    """Fit the pack; return each member's ``metrics.json`` summary."""
    check_config(cfg)
    if cfg.get("resume") is not None:
        raise ValueError(
            f"a pack resumes from ckpt_path=<pack dir>/{PACK_CHECKPOINTS}/last.ckpt, not resume=auto"
        )
    configs = member_configs(cfg)
    write_provenance(cfg, cfg.paths.output_dir, PROJECT_ROOT)
    members, datamodule = [], None
    for c in configs:  # as ssimlayer.train builds a run: the same initial weights
        pl.seed_everything(c.seed, workers=True)
        write_provenance(c, c.paths.output_dir, PROJECT_ROOT)
        datamodule = instantiate(c.data)
        members.append(instantiate(c.model))
    module = PackedClassifierModule(members)
    per_member = [build_callbacks(c) for c in configs]
    writer = PackMembers(
        [c.paths.output_dir for c in configs],
        [_pick(cbs, RunSummary) for cbs in per_member],
        [_pick(cbs, FilterVisualisation) for cbs in per_member],
        [_pick(cbs, FGSMSweep) for cbs in per_member],
        [_pick(cbs, LayerHealth) for cbs in per_member],
    )
    own = copy.deepcopy(cfg)  # the pack's checkpoints apart, so that eval sees only member run dirs
    for name in ("last_checkpoint", "nonfinite_guard"):
        if own.callbacks.get(name):
            own.callbacks[name].dirpath = str(Path(cfg.paths.output_dir) / PACK_CHECKPOINTS)
    callbacks = [*build_callbacks(own, skip=MEMBER_CALLBACKS), writer]
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        check_checkpoint_matches(ckpt_path, module, OmegaConf.to_container(cfg.model, resolve=True))
        (Path(cfg.paths.output_dir) / "resumed_from.txt").write_text(f"{ckpt_path}\n")
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    log.info("Training a pack of %d %s runs (seeds %s)", len(configs), cfg.model.name, cfg.seeds)
    with checkpoint_globals():  # the resume loads weights-only, as ssimlayer.train's does
        trainer.fit(
            module,
            datamodule=PackedDataModule(datamodule, cfg.seeds),
            ckpt_path=ckpt_path,
            weights_only=True,
        )
    members = module.unpack()
    return [s.write_json(trainer, m, finished=True) for s, m in zip(writer.summaries, members)]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pack")
def main(cfg: DictConfig) -> None:
    try:
        summaries = train_pack(cfg)
    except USER_ERRORS as e:
        report_error(e, Path(cfg.paths.output_dir))
        sys.exit(2)
    for metrics, c in zip(summaries, member_configs(cfg)):
        print_summary(metrics, Path(c.paths.output_dir))


if __name__ == "__main__":
    main()
