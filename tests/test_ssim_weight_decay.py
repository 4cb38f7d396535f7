"""``model.ssim_weight_decay_scale``: the SSIM filters' own weight decay (issue 28's ablation)."""

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from ssimlayer import SSIMConv2d
from ssimlayer.lightning.pack import PackedClassifierModule


def _module(make_cfg, *overrides):
    return instantiate(make_cfg(*overrides).model)


def test_default_is_one_group_with_the_optimisers_decay(make_cfg):
    module = _module(make_cfg, "model=shallow_ssim")
    assert module.ssim_weight_decay_scale == 1.0
    (group,) = module.configure_optimizers().param_groups
    assert group["weight_decay"] == 1e-4
    assert len(group["params"]) == len(list(module.parameters()))


@pytest.mark.parametrize(("model", "index"), [("shallow_ssim", 0), ("fig4_ssim", 2)])
@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_scale_gives_the_ssim_filters_their_own_decay(make_cfg, model, index, scale):
    module = _module(make_cfg, f"model={model}", f"model.ssim_weight_decay_scale={scale}")
    rest, ssim = module.configure_optimizers().param_groups
    layer = module.net.features[index][0]
    assert isinstance(layer, SSIMConv2d)
    assert ssim["params"] == [layer.weight] and ssim["weight_decay"] == pytest.approx(1e-4 * scale)
    assert rest["weight_decay"] == 1e-4
    assert len(rest["params"]) + 1 == len(list(module.parameters()))


def test_no_decay_leaves_the_ssim_filters_alone_at_zero_gradient(make_cfg):
    module = _module(make_cfg, "model=shallow_ssim", "model.ssim_weight_decay_scale=0")
    optimizer = module.configure_optimizers()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in module.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (name != "net.features.0.0.weight"), name  # decay moves all but SSIM


def test_a_net_without_ssim_layers_keeps_one_group(make_cfg):
    module = _module(make_cfg, "model=shallow_conv", "model.ssim_weight_decay_scale=2")
    assert len(module.configure_optimizers().param_groups) == 1


def test_negative_scale_raises(make_cfg):
    with pytest.raises(InstantiationException, match=r"must be >= 0 \(0: no weight .* got -1"):
        _module(make_cfg, "model=shallow_ssim", "model.ssim_weight_decay_scale=-1")


def test_pack_refuses_a_non_default_scale(make_cfg):
    members = [
        _module(make_cfg, "model=shallow_ssim", "model.ssim_weight_decay_scale=2") for _ in range(2)
    ]
    with pytest.raises(ValueError, match="member 0: sets ssim_weight_decay_scale"):
        PackedClassifierModule(members)
