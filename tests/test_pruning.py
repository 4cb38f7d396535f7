"""Filter pruning of SSIM layers (§3.2's suggestion) and its evaluation entry point."""

import csv

import pytest
import torch
from torch import nn

from ssimlayer import SSIMConv2d
from ssimlayer.robustness.pruning import prune_ssim_filters, select_filters


def _model():
    torch.manual_seed(0)
    layer = SSIMConv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 3, 3, 3))
        layer.weight[1] *= 0.01  # norm well below 1
        layer.weight[3] *= 0.05
    return nn.Sequential(layer, nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_select_by_threshold_and_fraction():
    norms = torch.tensor([3.0, 0.5, 2.0, 0.9])
    assert select_filters(norms, threshold=1.0).tolist() == [False, True, False, True]
    assert select_filters(norms, fraction=0.25).tolist() == [False, True, False, False]
    assert select_filters(norms, fraction=0.0).sum() == 0
    with pytest.raises(ValueError, match="exactly one"):
        select_filters(norms)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        select_filters(norms, fraction=1.5)


def test_channel_pruning_silences_the_pruned_maps():
    model = _model()
    stats = prune_ssim_filters(model, threshold=1.0, mode="channel")
    assert stats == {"pruned": 2, "total": 4, "share": 0.5}
    out = model[0](torch.rand(2, 3, 6, 6))
    assert out[:, [1, 3]].abs().max() == 0 and out[:, [0, 2]].abs().max() > 0


def test_weight_zeroing_leaves_an_input_dependent_map():
    model = _model()
    prune_ssim_filters(model, fraction=0.5, mode="weights")
    assert model[0].weight[[1, 3]].abs().max() == 0
    out = model[0](torch.rand(2, 3, 6, 6) * 0.01)  # small inputs: C1 C2 term is visible
    assert out[:, 1].abs().max() > 0  # Eq. 8 of a zero filter is not zero


def test_pruning_needs_an_ssim_layer_and_a_known_mode():
    with pytest.raises(ValueError, match="no SSIM layer"):
        prune_ssim_filters(nn.Sequential(nn.Conv2d(3, 4, 3)), threshold=1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        prune_ssim_filters(_model(), threshold=1.0, mode="zero")


def test_prune_entry_point_on_a_smoke_run(tiny_pair):
    from ssimlayer.prune import main

    smoke_run_dir = tiny_pair[1]  # fig4_ssim
    main([str(smoke_run_dir), "--num-examples", "16"])
    rows = list(csv.DictReader((smoke_run_dir / "pruning.csv").read_text().splitlines()))
    assert [(r["setting"], r["mode"]) for r in rows][:3] == [
        ("none", "none"),
        ("norm<1", "channel"),
        ("norm<1", "weights"),
    ]
    assert all(0 <= float(r["fgsm_top1_pct"]) <= float(r["fgsm_top5_pct"]) <= 100 for r in rows)
    assert float(rows[0]["share_removed"]) == 0 and int(rows[0]["num_images"]) == 16
    half = [r for r in rows if r["setting"] == "smallest50%"]
    assert all(float(r["share_removed"]) == 0.5 for r in half)
