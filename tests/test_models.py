"""The paper's networks as built from conf/model/*.yaml."""

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ssimlayer import SSIMConv2d
from ssimlayer.models import ConvNet, Normalize
from tests.conftest import MODELS

# (model, layer types in order, ReLU after each stage) as the paper / our Assumptions describe them.
EXPECTED = {
    "fig4_plain": ([nn.Conv2d, nn.Conv2d, nn.Conv2d], [True, True, True]),
    "fig4_ssim": ([nn.Conv2d, nn.Conv2d, SSIMConv2d], [True, True, True]),
    "fig4_ssim_norelu": ([nn.Conv2d, nn.Conv2d, SSIMConv2d], [True, True, False]),
    "shallow_ssim": ([SSIMConv2d, nn.Conv2d], [True, True]),
    "shallow_conv": ([nn.Conv2d, nn.Conv2d], [False, True]),
}


@pytest.mark.parametrize("name", MODELS)
def test_model_config_builds_the_described_network(make_cfg, name):
    module = instantiate(make_cfg(f"model={name}").model)
    net = module.net
    layer_types, relus = EXPECTED[name]
    assert [type(stage[0]) for stage in net.features] == layer_types
    assert [any(isinstance(m, nn.ReLU) for m in stage) for stage in net.features] == relus
    assert isinstance(net.normalize, Normalize)
    out = module(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_fig4_widths_are_the_documented_choice(make_cfg):
    net = instantiate(make_cfg("model=fig4_ssim").model).net
    layers = [stage[0] for stage in net.features]
    assert [m.out_channels for m in layers] == [32, 64, 128]
    assert [m.kernel_size for m in layers] == [(5, 5), (5, 5), (3, 3)]
    assert net.classifier[-1].in_features == 128 * 4 * 4


def test_widths_are_overridable(make_cfg):
    net = instantiate(make_cfg("model=fig4_plain", "model.net.widths=[2,3,5]").model).net
    assert [stage[0].out_channels for stage in net.features] == [2, 3, 5]


def test_normalisation_is_the_first_op():
    net = ConvNet(
        [nn.Conv2d],
        widths=[2],
        kernel_sizes=[3],
        paddings=[1],
        relu=[False],
        pools=[1],
        input_size=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(net(x), net.classifier(net.features((x - 0.5) / 0.25)))
    assert list(net.children())[0] is net.normalize


def test_standardize_false_feeds_the_images_as_they_are():
    kwargs = dict(widths=[2], kernel_sizes=[3], paddings=[1], relu=[False], pools=[1], input_size=8)
    torch.manual_seed(0)
    net = ConvNet([nn.Conv2d], standardize=False, **kwargs)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(net(x), net.classifier(net.features(x)), rtol=0, atol=0)
    torch.manual_seed(0)
    assert ConvNet([nn.Conv2d], **kwargs).state_dict().keys() == net.state_dict().keys()


@pytest.mark.parametrize(
    ("name", "default"),
    [("fig4_plain", True), ("fig4_ssim", True), ("shallow_conv", False), ("shallow_ssim", False)],
)
def test_standardize_default_per_model_and_overridable(make_cfg, name, default):
    # issue 28: the shallow pair takes [0, 1] images (its conv model diverged standardised)
    net = instantiate(make_cfg(f"model={name}").model).net
    assert (net.normalize.std.flatten().tolist() != [1.0, 1.0, 1.0]) is default
    for value, identity in (("true", False), ("false", True)):
        cfg = make_cfg(f"model={name}", f"model.net.standardize={value}")
        normalize = instantiate(cfg.model).net.normalize
        assert (normalize.mean.flatten().tolist() == [0.0] * 3) is identity
        assert (normalize.std.flatten().tolist() == [1.0] * 3) is identity


@pytest.mark.parametrize(("name", "index"), [("shallow_ssim", 0), ("fig4_ssim", 2)])
def test_ssim_init_std_is_overridable(make_cfg, name, index):
    default = instantiate(make_cfg(f"model={name}").model).net.features[index][0]
    assert default.init_std == 1.0
    override = f"model.net.layers.{index}.init_std=0.1"
    layer = instantiate(make_cfg(f"model={name}", override).model).net.features[index][0]
    assert isinstance(layer, SSIMConv2d) and layer.init_std == 0.1
    assert layer.weight.std().item() < 0.2


def test_mismatched_stage_lists_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"widths has 1 entries but there are 2 layers"):
        ConvNet(
            [nn.Conv2d, nn.Conv2d],
            widths=[4],
            kernel_sizes=[3, 3],
            paddings=[1, 1],
            relu=[True, True],
            pools=[2, 2],
        )


def test_unknown_model_name_gives_hydras_error(make_cfg):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="nosuchmodel"):
        make_cfg("model=nosuchmodel")
