"""Scale-out configs: DDP on 2 CPU processes (gloo), the SLURM launcher, the fast-GPU options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ssimlayer.train import train
from ssimlayer.utils import CONF_DIR


def test_slurm_launcher_composes_for_table1_without_submitting():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "experiment=table1", "trainer=gpu_fast", "seed=0"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


def test_ddp_config_composes(make_cfg):
    cfg = make_cfg("trainer=ddp", "trainer.accelerator=cpu")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


def test_speed_flags_default_off_and_train(make_cfg):
    assert not make_cfg().model.compile and not make_cfg().model.channels_last
    assert not make_cfg().data.device_resident and make_cfg().trainer.precision == "32-true"
    cfg = make_cfg(
        "experiment=shallow",
        "debug=fast_dev_run",
        "model.net.widths=[4,4]",
        "logger=none",
        "model.channels_last=true",
        "data.device_resident=true",
        "callbacks.fgsm_sweep.eps=[0.0,0.01]",
        "callbacks.fgsm_sweep.progress=false",
    )
    metrics = train(cfg)  # the val loop and the FGSM sweep run with the device-resident loaders
    assert metrics["finished"]
    assert (Path(cfg.paths.output_dir) / "fgsm_sweep.csv").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [
        sys.executable,
        "-m",
        "ssimlayer.train",
        "experiment=shallow",
        "debug=smoke",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "model.net.widths=[4,4]",
        "logger=csv",
        "data.num_train=64",
        "data.num_val=32",
        "~callbacks.fgsm_sweep",
        f"paths.output_root={tmp_path}",
    ]  # sweep: rank 0 only, see README
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "shallow" / "runs").glob("*"))
    assert len(runs) == 1, runs  # rank 1 writes into rank 0's run dir
    assert json.loads((runs[0] / "metrics.json").read_text())["finished"]
    assert "gloo" in proc.stdout + proc.stderr or torch.distributed.is_gloo_available()
