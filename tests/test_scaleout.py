"""Scale-out configs: DDP on 2 CPU processes (gloo), the SLURM launcher, the fast-GPU options."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssimlayer.lightning.module import ClassifierModule
from ssimlayer.robustness import fgsm_sweep
from ssimlayer.train import train
from ssimlayer.utils import compose_config


def test_slurm_launcher_composes_for_table1_without_submitting():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_config(
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


def test_compile_modes_train_and_an_unknown_mode_is_a_clear_error(make_cfg):
    """model.compile takes torch.compile's modes; reduce-overhead (CUDA graphs on a GPU) compiles as
    the default mode on a CPU, so the run and its FGSM sweep go through the compiled network."""
    cfg = make_cfg(
        "experiment=shallow",
        "debug=fast_dev_run",
        "model.net.widths=[4,4]",
        "logger=none",
        "model.compile=reduce-overhead",
        "callbacks.fgsm_sweep.eps=[0.0,0.01]",
        "callbacks.fgsm_sweep.progress=false",
    )
    model = instantiate(cfg.model)
    assert model.net._compiled_call_impl is not None  # nn.Module.compile wraps the network
    assert train(cfg)["finished"]
    assert (Path(cfg.paths.output_dir) / "fgsm_sweep.csv").exists()
    with pytest.raises(ValueError, match="model.compile must be false, true or one of"):
        ClassifierModule(model.net, cfg.model.optimizer, compile="fast")


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_ddp_two_cpu_processes_gloo(tmp_path, steps_per_execution):
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
        "callbacks.fgsm_sweep.max_batches=1",
        "callbacks.fgsm_sweep.progress=false",
        f"paths.output_root={tmp_path}",
        f"model.steps_per_execution={steps_per_execution}",
    ]  # the sweep runs on rank 0 while rank 1 waits at a barrier
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "shallow" / "runs").glob("*"))
    assert len(runs) == 1, runs  # rank 1 writes into rank 0's run dir
    assert json.loads((runs[0] / "metrics.json").read_text())["finished"]
    # The sweep under DDP gives the numbers of one process attacking the final weights.
    with open(runs[0] / "fgsm_sweep.csv") as f:
        got = list(csv.DictReader(f))
    cfg = OmegaConf.load(runs[0] / "config_resolved.yaml")
    module = instantiate(cfg.model)
    state = torch.load(runs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    eps = list(cfg.callbacks.fgsm_sweep.eps)
    for split in ("train", "val"):
        want = fgsm_sweep(module, dm.eval_dataloader(split), eps, max_batches=1, progress=False)
        rows = [r for r in got if r["split"] == split]
        assert [float(r["eps"]) for r in rows] == eps
        for r, w in zip(rows, want, strict=True):
            assert float(r["top1_pct"]) == pytest.approx(100 * w["top1"])  # files: percent
            assert float(r["top5_pct"]) == pytest.approx(100 * w["top5"])
    assert "gloo" in proc.stdout + proc.stderr or torch.distributed.is_gloo_available()
