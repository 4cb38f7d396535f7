"""The Fig. 6 filter visualisation and the Fig. 9 FGSM-sweep callback, outside a full run."""

import csv
import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ssimlayer import SSIMConv2d
from ssimlayer.data import SyntheticDataModule
from ssimlayer.lightning import ClassifierModule, FGSMSweep, FilterVisualisation
from ssimlayer.lightning.filters import filter_grid, filter_norms
from ssimlayer.models import ConvNet


def tiny_module() -> ClassifierModule:
    net = ConvNet(
        [SSIMConv2d, nn.Conv2d],
        widths=[6, 4],
        kernel_sizes=[7, 5],
        paddings=[3, 2],
        relu=[True, True],
        pools=[2, 2],
    )
    return ClassifierModule(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.01), name="tiny")


def test_filter_grid_and_norms():
    w = torch.randn(6, 3, 7, 7)
    grid = filter_grid(w)
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    torch.testing.assert_close(filter_norms(w), w.flatten(1).norm(dim=1))
    assert filter_grid(torch.randn(5, 8, 3, 3)).shape[0] == 3  # non-RGB: first channel in grey


def test_callbacks_write_their_files(tmp_path):
    dm = SyntheticDataModule(num_train=32, num_val=16, batch_size=8)
    eps = [0.0, 0.004, 8 / 255]
    sweep = FGSMSweep(str(tmp_path), eps=eps, max_batches=1, progress=False)
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[FilterVisualisation(str(tmp_path), every_n_epochs=1), sweep],
        accelerator="cpu",
    )
    trainer.fit(tiny_module(), datamodule=dm)
    for tag in ("", "_epoch001", "_epoch002"):
        assert (tmp_path / f"filters{tag}_grid.png").stat().st_size > 0
        assert (tmp_path / f"filters{tag}_norms.png").stat().st_size > 0
    stats = json.loads((tmp_path / "filters_norms.json").read_text())
    assert stats["layer"] == "SSIMConv2d" and len(stats["norms"]) == 6
    assert stats["share_norm_below_1"] == sum(n < 1 for n in stats["norms"]) / 6
    rows = list(csv.reader((tmp_path / "fgsm_sweep.csv").read_text().splitlines()))
    assert rows[0] == ["split", "eps", "top1_pct", "top5_pct"]
    assert [(r[0], float(r[1])) for r in rows[1:]] == [
        (s, e) for s in ("train", "val") for e in eps
    ]
    assert all(0 <= float(r[2]) <= float(r[3]) <= 100 for r in rows[1:])  # top1 <= top5, in %


def test_sweep_callback_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="-1"):
        FGSMSweep(str(tmp_path), eps=[-1])
    with pytest.raises(ValueError, match="unknown split"):
        FGSMSweep(str(tmp_path), eps=[0.0], splits=["test"])


def test_filter_visualisation_survives_a_diverged_run(tmp_path):
    from types import SimpleNamespace

    module = tiny_module()
    with torch.no_grad():
        module.net.first_layer.weight[:2] = float("nan")  # what a diverged run leaves behind
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=3, loggers=[])
    paths = FilterVisualisation(str(tmp_path)).draw(trainer, module, "", 1)
    assert all(p.stat().st_size > 0 for p in paths)
    stats = json.loads((tmp_path / "filters_norms.json").read_text())
    assert sum(n != n for n in stats["norms"]) == 2  # the two NaN norms are reported as such
