"""Shared fixtures for the pipeline tests: composing Hydra configs inside tmp_path, W&B offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from ssimlayer.utils import CONF_DIR, compose_config, register_resolvers

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
        return compose_config(
            config_name="train",
            overrides=[
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.output_root={tmp_path / 'outputs'}",
                *overrides,
            ],
        )

    return _make


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> list[Path]:
    """fig4_plain and fig4_ssim with 4-8 channels, trained for 2 batches on synthetic data
    (shared by the robustness and pruning tests)."""
    from ssimlayer.train import train

    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for i, model in enumerate(["fig4_plain", "fig4_ssim"]):
        run_dir = root / f"{i}_{model}_seed0"
        cfg = compose_config(
            config_name="train",
            overrides=[
                "experiment=table1",
                "debug=smoke",
                f"model={model}",
                "model.net.widths=[4,4,8]",
                "logger=csv",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "~callbacks.fgsm_sweep",
                "~callbacks.filters",
                f"paths.output_dir={run_dir}",
            ],
        )
        train(cfg)
        dirs.append(run_dir)
    return dirs
