"""Where the repository is, so configs can name paths relative to it wherever Python was started.

The project is installed editable (``make install``), so the repository root is three levels above
this file; ``SSIMLAYER_ROOT`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["PROJECT_ROOT", "CONF_DIR", "register_resolvers"]

PROJECT_ROOT = Path(os.environ.get("SSIMLAYER_ROOT", Path(__file__).resolve().parents[3]))
CONF_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """``${project_root:}`` in configs: the repository root as an absolute path."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
