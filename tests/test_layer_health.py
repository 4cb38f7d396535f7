"""LayerHealth (issue 28): the statistics it logs are the ones computed by hand, and reach epochs.csv."""

import math

import pytest
import torch
from torch import nn

from ssimlayer.lightning import LayerHealth
from ssimlayer.lightning.layer_health import STATS, plot_layer_health, tracked_layers
from ssimlayer.models import ConvNet
from ssimlayer.nn import SSIMConv2d
from ssimlayer.train import train
from ssimlayer.utils.runs import read_csv
from tests.conftest import TINY_WIDTHS


def _net() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(
        [nn.Conv2d, SSIMConv2d],
        widths=[4, 6],
        kernel_sizes=[3, 3],
        paddings=[1, 1],
        relu=[True, True],
        pools=[2, 2],
    )


def test_tracked_layers_are_named_by_kind_and_position():
    net = _net()
    assert [label for label, _, _ in tracked_layers(net)] == ["conv1", "ssim2", "fc3"]
    assert [(label, name) for label, name, _ in tracked_layers(net, "ssim")] == [
        ("ssim2", "features.1.0")
    ]
    with pytest.raises(ValueError, match="layers must be 'all' or 'ssim', got 'conv'"):
        tracked_layers(net, "conv")


def test_probe_statistics_match_a_direct_computation(tmp_path):
    net, x = _net(), torch.rand(5, 3, 32, 32)
    health = LayerHealth(str(tmp_path), near_zero=0.05, probe_size=4)
    health.take_probe(x, net, epoch=0, step=0)
    (row,) = health.history
    assert row["epoch"] == 0 and set(row) == {"epoch", "step"} | {
        f"health/{layer}/{stat}" for layer in ("conv1", "ssim2", "fc3") for stat in STATS
    }
    probe = x[:4]
    with torch.no_grad():
        h = net.features[0](net.normalize(probe))  # conv -> ReLU -> pool
        y = net.features[1][0](h)  # the SSIM layer's output, before its ReLU
    w = net.features[1][0].weight
    expected = {
        "out_mean": y.mean(),
        "out_std": y.std(correction=0),
        "out_near0": (y.abs() < 0.05).float().mean(),
        "in_std": h.std(correction=0),
        "w_std": w.std(),
        "w_norm": torch.stack([f.norm() for f in w]).mean(),
    }
    for stat, value in expected.items():
        assert row[f"health/ssim2/{stat}"] == pytest.approx(value.item(), rel=1e-5), stat
    assert math.isnan(row["health/ssim2/grad_ratio"])  # no step yet


def test_grad_ratio_is_the_mean_sampled_gradient_norm_over_the_weight_norm(tmp_path):
    net = _net()
    health = LayerHealth(str(tmp_path), layers="ssim", grad_every_n_steps=2)
    health.take_probe(torch.rand(2, 3, 32, 32), net, epoch=0, step=0)
    w = net.features[1][0].weight
    grads = [torch.full_like(w, c) for c in (1.0, 50.0, 3.0, 70.0)]
    for g in grads:  # steps 0 and 2 are sampled
        if health.due():
            health.add_grads([g])

    class Trainer:
        current_epoch, global_step, loggers, callback_metrics = 0, 4, [], {}

    module = nn.Module()
    module.net = net
    trainer = Trainer()
    values = health.epoch_end(trainer, module)
    expected = (grads[0].norm() + grads[2].norm()) / 2 / w.norm()
    assert values["health/ssim2/grad_ratio"] == pytest.approx(expected.item(), rel=1e-5)
    assert (
        float(trainer.callback_metrics["health/ssim2/grad_ratio"])
        == values["health/ssim2/grad_ratio"]
    )
    assert [r["epoch"] for r in health.history] == [0, 1]
    assert (tmp_path / "layer_health.csv").read_text().startswith("epoch,step,health/ssim2/")
    assert plot_layer_health({"": health.history}, tmp_path / "h.png", "t").stat().st_size > 0


@pytest.mark.parametrize("bad", ["near_zero=0", "probe_size=0", "grad_every_n_steps=1.5"])
def test_rejects_bad_settings(tmp_path, bad):
    name, value = bad.split("=")
    with pytest.raises(ValueError, match=name):
        LayerHealth(str(tmp_path), **{name: float(value) if "." in value else int(value)})


def test_a_smoke_run_writes_the_columns_csv_and_plot(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=table1",
        "debug=smoke",
        "model=fig4_ssim",
        f"model.net.widths={TINY_WIDTHS['fig4_ssim']}",
        "logger=csv",
        "trainer.max_epochs=2",
        "~callbacks.fgsm_sweep",
        "~callbacks.filters",
    )
    train(cfg)
    out = tmp_path / "run"
    rows = read_csv(out / "epochs.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:  # in the same row as the epoch's accuracies
        assert [k for k in r if k.startswith("val") and r[k]]  # whatever the accuracies' names
        assert 0 < float(r["health/ssim3/out_std"]) < 1
        assert float(r["health/ssim3/grad_ratio"]) > 0 and float(r["health/conv1/w_std"]) > 0
    assert [r["epoch"] for r in read_csv(out / "layer_health.csv")] == ["0", "1", "2"]
    assert (out / "layer_health.png").stat().st_size > 0
    logged = read_csv(next((out / "csv").rglob("metrics.csv")))  # the loggers get them too
    assert any(r.get("health/ssim3/out_std") for r in logged)
