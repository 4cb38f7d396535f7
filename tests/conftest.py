"""Shared fixtures for the pipeline tests: composing Hydra configs inside tmp_path, W&B offline."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ssimlayer.utils import CONF_DIR, register_resolvers

register_resolvers()

#: Tiny widths per model, so every pipeline test trains in seconds on a CPU.
TINY_WIDTHS = {
    "fig4_plain": "[4,4,8]",
    "fig4_ssim": "[4,4,8]",
    "fig4_ssim_norelu": "[4,4,8]",
    "shallow_ssim": "[4,4]",
    "shallow_conv": "[4,4]",
}
MODELS = sorted(TINY_WIDTHS)
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No test may reach W&B servers or write into the user's W&B dirs."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


@pytest.fixture
def make_cfg(tmp_path) -> Callable[..., DictConfig]:
    """``make_cfg("experiment=table1", ...)``: the composed train config, run dir in tmp_path."""

    def _make(*overrides: str) -> DictConfig:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose(
                config_name="train",
                overrides=[f"paths.output_dir={tmp_path / 'run'}",
                           f"paths.output_root={tmp_path / 'outputs'}", *overrides],
            )

    return _make
