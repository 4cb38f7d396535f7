"""Every command the README shows runs as written: make targets exist and expand, and training
commands compose with their overrides (a dry run that trains nothing)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from ssimlayer.utils import compose_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

#: Commands shown for reading, not for a test to run: listing a folder, activating the venv, and
#: W&B uploads (they need an account or a server).
NOT_RUN = ("ls ", "source ", ".venv/bin/wandb ")


def readme_commands() -> list[str]:
    """Shell commands of the README's ```bash blocks (continued lines joined, comments dropped) and
    of its tables' `make ...` cells."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    commands += re.findall(r"\| `(make [^`]+)` \|", README)
    return commands


def _dry_run_overrides(args: list[str]) -> list[str]:
    """A multirun's overrides as one job's: ``-m`` dropped, each sweep ``a,b`` as its first value."""
    out = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            continue
        key, sep, value = arg.partition("=")
        if sep and "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}{sep}{value}")
    return out


ENTRY_CONFIGS = {"ssimlayer.train": "train", "ssimlayer.pack": "pack"}


def _compose(train_args: list[str], config: str = "train") -> None:
    """What ``python -m ssimlayer.train <args>`` (or ``.pack``) composes before it trains
    (unknown config names and keys fail here as they would there)."""
    cfg = compose_config(config, overrides=_dry_run_overrides(train_args))
    assert cfg.model.name and cfg.trainer.max_epochs


def test_the_readme_shows_the_two_setup_commands_first():
    assert readme_commands()[:2] == ["make install", "make test"]


@pytest.mark.parametrize("command", [c for c in readme_commands() if not c.startswith(NOT_RUN)])
def test_readme_command_runs_as_written(command):
    words = shlex.split(command)
    if words[0] == "make":
        dry = subprocess.run(
            ["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert dry.returncode == 0, dry.stderr
        for line in dry.stdout.splitlines():
            for module, config in ENTRY_CONFIGS.items():
                if line.startswith(f".venv/bin/python -m {module} "):
                    _compose(shlex.split(line)[3:], config)
    elif words[:2] == [".venv/bin/python", "-m"] and words[2] in ENTRY_CONFIGS:
        _compose(words[3:], ENTRY_CONFIGS[words[2]])
    else:
        pytest.fail(f"the README shows a command this test does not know how to check: {command}")
