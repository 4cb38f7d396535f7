"""A pack of runs (ssimlayer.pack) trains each member as that run would train alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ssimlayer.lightning.checkpointing import load_checkpoint
from ssimlayer.models import ConvNet
from ssimlayer.models.packed import PackedConvNet
from ssimlayer.nn import SSIMConv2d
from ssimlayer.pack import train_pack
from ssimlayer.train import train
from ssimlayer.utils import compose_config
from ssimlayer.utils.runs import find_runs, read_csv

SEEDS = [0, 1, 2]
#: float32 throughout. A grouped convolution and the batched linear layer sum in another order than
#: the solo layers (measured: 1e-7 relative after 4 steps); rounding differences grow over steps,
#: so 1e-5 relative leaves room for other CPUs and kernels without hiding a wrong gradient (those
#: show at 1e-1 or worse after one step).
RTOL, ATOL = 1e-5, 1e-6
TINY = [
    "experiment=table1",
    "debug=smoke",
    "model.net.widths=[4,4,8]",
    "logger=none",
    "data.num_train=64",
    "data.num_val=32",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "trainer.enable_progress_bar=false",
    "callbacks.fgsm_sweep.max_batches=1",
    "callbacks.fgsm_sweep.eps=[0.0,0.01]",
    "callbacks.fgsm_sweep.progress=false",
]


def _nets(n: int) -> list[ConvNet]:
    return [
        ConvNet(
            [nn.Conv2d, nn.Conv2d, SSIMConv2d],
            widths=[4, 4, 8],
            kernel_sizes=[5, 5, 3],
            paddings=[2, 2, 1],
            relu=[True, True, True],
            pools=[2, 2, 2],
        )
        for _ in range(n)
    ]


def test_packed_net_is_its_members():
    torch.manual_seed(0)
    nets = _nets(3)
    packed = PackedConvNet(nets)
    xs = [torch.rand(5, 3, 32, 32) for _ in nets]
    out = packed(torch.cat(xs, dim=1))  # (5, 3, 10)
    for i, (net, x) in enumerate(zip(nets, xs)):
        torch.testing.assert_close(out[:, i], net(x), rtol=RTOL, atol=ATOL)
    fresh = _nets(3)
    packed.unpack_into(fresh)
    for a, b in zip(nets, fresh):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


def test_packed_net_refuses_other_architectures():
    nets = _nets(2)
    nets[1].features[0][0] = nn.Conv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match="network 1 differs"):
        PackedConvNet(nets)


def _compose(config: str, *overrides: str):
    return compose_config(config, overrides=[*TINY, *overrides])


@pytest.mark.parametrize("model", ["fig4_ssim"])
def test_pack_of_three_equals_three_runs_alone(tmp_path, model):
    solo_dirs = []
    for seed in SEEDS:
        out = tmp_path / f"solo{seed}"
        # seed here too: the comparison then does not depend on where train() seeds relative to
        # building the model (the pack seeds, then builds data and model, as train() did)
        pl.seed_everything(seed, verbose=False)
        cfg = _compose("train", f"model={model}", f"seed={seed}", "data.device_resident=true")
        cfg.paths.output_dir = str(out)
        train(cfg)
        solo_dirs.append(out)
    pack_dir = tmp_path / "pack"
    train_pack(_compose("pack", f"model={model}", "seeds=[0,1,2]", f"paths.output_dir={pack_dir}"))

    for i, (seed, solo) in enumerate(zip(SEEDS, solo_dirs)):
        member = pack_dir / f"{i}_{model}_seed{seed}"
        files = {p.relative_to(solo) for p in solo.rglob("*") if p.is_file()}
        files -= {p for p in files if p.name.startswith("best-")}  # ModelCheckpoint: solo only
        assert files <= {p.relative_to(member) for p in member.rglob("*") if p.is_file()}
        a, b = read_csv(solo / "epochs.csv"), read_csv(member / "epochs.csv")
        assert len(a) == len(b) == 2
        for row_a, row_b in zip(a, b):
            for key in (
                "train_loss",
                "val_loss",
                "train_top1_pct",
                "val_top1_pct",
                "health/ssim3/out_std",  # LayerHealth: the member's probe and weights
                "health/ssim3/grad_ratio",  # and its block of the pack's gradients
                "health/conv1/grad_ratio",
                "health/fc4/grad_ratio",
            ):
                assert float(row_b[key]) == pytest.approx(float(row_a[key]), rel=RTOL, abs=ATOL)
        ca = load_checkpoint(solo / "checkpoints/last.ckpt")
        cb = load_checkpoint(member / "checkpoints/last.ckpt")
        assert cb["global_step"] == ca["global_step"] == 4
        for key, value in ca["state_dict"].items():
            torch.testing.assert_close(cb["state_dict"][key], value, rtol=RTOL, atol=ATOL)
        sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
        for j in sa:
            torch.testing.assert_close(
                sb[j]["momentum_buffer"], sa[j]["momentum_buffer"], rtol=RTOL, atol=ATOL
            )


def test_pack_from_the_command_line_writes_runs_the_report_reads(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [
        sys.executable,
        "-m",
        "ssimlayer.pack",
        *TINY,
        "seeds=[0,1,2]",
        "trainer.max_epochs=1",
        f"paths.output_root={tmp_path / 'outputs'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = find_runs(tmp_path / "outputs", finished=True)
    assert sorted(r.metrics["seed"] for r in runs) == SEEDS
    assert {r.model for r in runs} == {"fig4_ssim"}
    for run in runs:
        assert run.metrics["epochs"] == 1 and run.metrics["pack_members"] == 3
        assert run.fgsm and run.filters and (run.path / "checkpoints" / "last.ckpt").is_file()
        assert Path(run.metrics["pack_dir"]) == run.path.parent


def test_a_graphed_pack_logs_its_members_gradient_ratios_in_every_epoch(tmp_path, monkeypatch):
    # On an H200 the graphed pack's gradient ratios were NaN after epoch 1: Lightning sets the
    # gradients to None before each validation and a CUDA-graph replay left them None. The tests'
    # stand-in capture behaves as a graph towards .grad (tests/test_graphed_step.py).
    from ssimlayer.lightning import ClassifierModule
    from tests.test_graphed_step import eager_capture

    monkeypatch.setattr(ClassifierModule, "_graph_capture", staticmethod(eager_capture))
    monkeypatch.setattr(ClassifierModule, "_graph_device_types", ("cpu",))
    rows = {}
    for graph in ("false", "true"):
        out = tmp_path / graph
        overrides = ["model=fig4_ssim", "seeds=[0,1]", f"paths.output_dir={out}"]
        overrides += ["data.device_resident=true", "model.cuda_graph_warmup=1"]
        train_pack(_compose("pack", *overrides, f"model.cuda_graph={graph}"))
        rows[graph] = [read_csv(out / f"{i}_fig4_ssim_seed{i}" / "epochs.csv") for i in (0, 1)]
    for eager, graphed in zip(rows["false"], rows["true"], strict=True):
        assert len(eager) == len(graphed) == 2
        for row_e, row_g in zip(eager, graphed):
            for key in ("health/ssim3/grad_ratio", "health/conv1/grad_ratio", "train_loss"):
                assert float(row_g[key]) == pytest.approx(float(row_e[key]), rel=RTOL, abs=ATOL)


def test_pack_members_leave_val_empty_in_epochs_without_validation(tmp_path):
    # Without validation in epoch 1 a member's row once showed the sanity check's numbers
    # (Lightning's default: 2 validation batches before training).
    out = tmp_path / "pack"
    every_2nd = ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"]
    train_pack(
        _compose("pack", "model=fig4_plain", "seeds=[0,1]", f"paths.output_dir={out}", *every_2nd)
    )
    for i in (0, 1):
        run = out / f"{i}_fig4_plain_seed{i}"
        rows = read_csv(run / "epochs.csv")
        assert [r["val_top1_pct"] != "" for r in rows] == [False, True, False]
        assert json.loads((run / "metrics.json").read_text())["best_val_top1_epoch"] == 2
