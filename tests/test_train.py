"""The Hydra entry point: every experiment composes, every model trains, a multirun works."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from ssimlayer.train import train
from ssimlayer.utils.runs import read_csv
from tests.conftest import EXPERIMENTS, MODELS, TINY_WIDTHS

REPO = Path(__file__).resolve().parents[1]


def test_every_paper_experiment_has_a_config():
    assert set(EXPERIMENTS) >= {"table1", "shallow", "nonlinearity", "table2"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.name == experiment
    module = instantiate(cfg.model)
    datamodule = instantiate(cfg.data)
    # Table 2 runs on the 7-class Tiny ImageNet stand-in (conf/data/imagenet_cifar7.yaml)
    num_classes = 7 if experiment == "table2" else 10
    assert datamodule.num_classes == module.hparams.num_classes == num_classes
    pair = cfg.hydra.sweeper.params.model.split(",") if "hydra" in cfg else None
    assert pair is None or len(pair) == 2
    # the §3.1 optimiser by default
    opt = cfg.model.optimizer
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.01, 0.9, 1e-4)
    assert cfg.data.get("batch_size") == 32 and cfg.trainer.max_epochs == 500


def test_cifar10_root_defaults_next_to_the_repo(make_cfg, monkeypatch):
    monkeypatch.delenv("SSIMLAYER_DATA", raising=False)
    cfg = make_cfg("experiment=table1")
    assert Path(cfg.data.root).resolve() == (REPO / ".." / "shared" / "data" / "cifar10").resolve()


@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_model(make_cfg, model):
    cfg = make_cfg(
        f"model={model}",
        f"model.net.widths={TINY_WIDTHS[model]}",
        "debug=fast_dev_run",
        "logger=none",
        "callbacks.fgsm_sweep.eps=[0.0,0.01]",
        "callbacks.fgsm_sweep.progress=false",
    )
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert metrics["finished"] and metrics["model"] == model
    assert (out / "fgsm_sweep.csv").exists() and (out / "filters_grid.png").exists()


#: Table 1's smoke run, at 4-8 channels on 64 synthetic training images.
SMALL_SMOKE = (
    "experiment=table1",
    "debug=smoke",
    "model.net.widths=[4,4,8]",
    "data.num_train=64",
    "data.num_val=32",
    "callbacks.fgsm_sweep.progress=false",
)


def test_smoke_run_writes_every_artefact_and_wandb_offline(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL_SMOKE)
    assert cfg.logger.wandb.offline is True
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert out.is_relative_to(tmp_path)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary == metrics
    for key in (
        "final_train_top1_pct",
        "best_val_top1_pct",
        "best_val_top5_pct",
        "epochs",
        "wall_time_s",
        "device",
        "seed",
    ):
        assert summary[key] is not None, key
    assert summary["epochs"] == 1
    rows = list(csv.DictReader((out / "fgsm_sweep.csv").read_text().splitlines()))
    assert list(rows[0]) == ["split", "eps", "top1_pct", "top5_pct"]  # accuracies in percent
    assert all(0 <= float(r["top1_pct"]) <= float(r["top5_pct"]) <= 100 for r in rows)
    header = (out / "epochs.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == [
        "epoch",
        "step",
        "train_loss",
        "train_top1_pct",
        "train_top5_pct",
        "val_loss",
        "val_top1_pct",
        "val_top5_pct",
    ]
    assert 0 <= summary["best_val_top1_pct"] <= 100
    assert len(rows) == 2 * len(cfg.callbacks.fgsm_sweep.eps)
    assert {r["split"] for r in rows} == {"train", "val"}
    assert list(out.glob("filters*.png")) and (out / "epochs.csv").exists()
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert any(p.name.startswith("best") for p in (out / "checkpoints").iterdir())
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["packages"]["torch"] and "sha" in prov["git"]
    assert (out / "config_resolved.yaml").exists()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    tables = list(runs[0].glob("files/media/table/**/*.table.json"))
    assert tables, "the FGSM wandb.Table was not logged"


def test_wandb_failure_falls_back_to_csv(make_cfg, monkeypatch):
    import pytorch_lightning.loggers as loggers

    def broken(self):
        raise RuntimeError("no wandb here")

    monkeypatch.setattr(loggers.WandbLogger, "experiment", property(broken))
    cfg = make_cfg(
        "model=shallow_conv",
        "model.net.widths=[4,4]",
        "debug=fast_dev_run",
        "~callbacks.fgsm_sweep",
        "logger.wandb.offline=true",
        "~logger.csv",
    )
    with pytest.warns(RuntimeWarning, match="continuing with CSV logging"):
        metrics = train(cfg)
    assert metrics["finished"]


def test_negative_eps_in_config_is_a_clear_error(make_cfg):
    from hydra.errors import InstantiationException

    cfg = make_cfg("callbacks.fgsm_sweep.eps=[0.0,-0.1]")
    # Hydra wraps the callback's ValueError; the message still names the value and the key
    with pytest.raises(InstantiationException, match=r"(?s)ValueError.*got -0\.1.*fgsm_sweep"):
        instantiate(cfg.callbacks.fgsm_sweep)


def test_multirun_subprocess(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [
        sys.executable,
        "-m",
        "ssimlayer.train",
        "-m",
        "experiment=shallow",
        "debug=smoke",
        "seed=0,1",
        "model.net.widths=[4,4]",
        "logger=csv",
        "data.num_train=64",
        "data.num_val=32",
        "callbacks.fgsm_sweep.eps=[0.0,0.01]",
        f"paths.output_root={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "shallow" / "multirun").glob("*/*_seed*"))
    names = sorted(p.name.split("_", 1)[1] for p in runs)
    assert names == [
        "shallow_conv_seed0",
        "shallow_conv_seed1",
        "shallow_ssim_seed0",
        "shallow_ssim_seed1",
    ]
    for run in runs:
        assert (run / "metrics.json").exists() and (run / "fgsm_sweep.csv").exists()
        assert json.loads((run / "metrics.json").read_text())["seed"] in (0, 1)
    # the console: each job's plan says which run of how many (2 models x 2 seeds), each run ends
    # with its summary, and the per-eps FGSM log lines are gone (they are in fgsm_sweep.csv)
    for i in range(1, 5):
        assert f"[ssimlayer] run {i} of 4: shallow_" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("FGSM eps 0.007 top-1") == 0  # eps 0.007 is not in this sweep
    assert proc.stderr.count("  run dir ") == 4
    assert "FGSM train eps=" not in proc.stderr + proc.stdout


def test_epochs_without_validation_have_empty_val_columns(make_cfg, tmp_path):
    # trainer.check_val_every_n_epoch=2: validation after epochs 2 and 4 only. The other rows once
    # repeated the previous validation (or, in a pack, the sanity check's), and the best epoch with
    # them.
    cfg = make_cfg(
        *SMALL_SMOKE,
        "logger=csv",
        "trainer.max_epochs=5",
        "trainer.check_val_every_n_epoch=2",
        "callbacks.fgsm_sweep.max_batches=1",
    )
    metrics = train(cfg)
    rows = read_csv(Path(cfg.paths.output_dir) / "epochs.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    validated = [r["epoch"] for r in rows if r["val_top1_pct"] != ""]
    assert validated == ["2", "4"]
    assert all(r["train_top1_pct"] != "" for r in rows)
    assert metrics["best_val_top1_epoch"] in (2, 4)
    assert metrics["final_val_top1_pct"] == pytest.approx(float(rows[3]["val_top1_pct"]))
