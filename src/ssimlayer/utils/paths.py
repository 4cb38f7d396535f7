"""Where the repository is, so configs can name paths relative to it wherever Python was started.

The project is installed editable (``make install``), so the repository root is three levels above
this file; ``SSIMLAYER_ROOT`` overrides it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "PROJECT_ROOT",
    "CONF_DIR",
    "compose_config",
    "program_name",
    "register_resolvers",
    "relative_to_root",
]

PROJECT_ROOT = Path(os.environ.get("SSIMLAYER_ROOT", Path(__file__).resolve().parents[3]))
CONF_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """``${project_root:}`` in configs: the repository root as an absolute path;
    ``${run_label:}``: this job's place in a Hydra multirun ("run 2 of 6"), else empty."""
    for name, resolver in (("project_root", lambda: str(PROJECT_ROOT)), ("run_label", run_label)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def program_name(argv0: str) -> str:
    """The entry point as ``python -m`` names it, from a process's ``argv[0]``:
    ``.../ssimlayer/train.py`` -> ``ssimlayer.train``; a console script keeps its own name
    (``ssimlayer-train``)."""
    name = Path(argv0).stem
    return name if name.startswith("ssimlayer") else f"ssimlayer.{name}"


def relative_to_root(text: str | Path) -> str:
    """``text`` (a path, or an argument holding one) with this repository's absolute path made
    relative (``/home/x/ssimlayer/outputs/run`` -> ``outputs/run``), so that a committed result
    names paths that hold in any clone."""
    return str(text).replace(str(PROJECT_ROOT).rstrip("/") + "/", "")


def compose_config(
    config_name: str, overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, composed as the command line would compose it,
    outside a Hydra run (tests, benchmarks, the packs' members)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name, list(overrides), return_hydra_config=return_hydra_config)


def run_label() -> str:
    """``"run 2 of 6"`` inside a Hydra multirun, ``""`` otherwise (or outside Hydra).

    The number of jobs is counted as Hydra's basic sweeper forms them: the experiment's
    ``hydra.sweeper.params`` overridden by the command line's sweeps, both as the multirun's
    ``multirun.yaml`` recorded them (a job's own config holds only its own values).
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hc = HydraConfig.get()
        if hc.mode is None or hc.mode.name != "MULTIRUN":
            return ""
        recorded = OmegaConf.load(Path(hc.sweep.dir) / "multirun.yaml").hydra
        sweep = {k: f"{k}={v}" for k, v in (recorded.sweeper.get("params") or {}).items()}
        for o in recorded.overrides.task:
            sweep[o.split("=", 1)[0]] = o
        parsed = OverridesParser.create().parse_overrides(list(sweep.values()))
        total = math.prod(
            len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override()
        )
        return f"run {int(hc.job.num) + 1} of {total}"
    except Exception:  # noqa: BLE001 -- a label is a courtesy; no run fails for it
        return ""
