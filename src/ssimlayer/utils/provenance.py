"""What produced a run: resolved config, git SHA, package versions, command line."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["write_provenance", "git_info"]

PACKAGES = (
    "ssimlayer",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "wandb",
    "torchmetrics",
    "numpy",
)


def git_info(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_provenance(cfg: DictConfig, output_dir: str | Path, repo: Path) -> dict[str, Any]:
    """Write ``config_resolved.yaml`` and ``provenance.json`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "git": git_info(repo),
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "seed": cfg.get("seed"),
    }
    (out / "provenance.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
