"""The compiled elementwise path computes what the eager definition computes."""

import pytest
import torch

from ssimlayer import _fusion, functional, ssim_conv2d


def _forward_backward(x, w, input_grad=True, **geom):
    x = x.clone().requires_grad_(input_grad)
    w = w.clone().requires_grad_()
    out = ssim_conv2d(x, w, **geom)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad if input_grad else out.new_zeros(()), w.grad


@pytest.mark.parametrize(
    "geom",
    [
        dict(padding=1),  # expanding: Sxy recomputed in backward
        dict(stride=2, padding=1, groups=2),  # Sxy saved
        dict(stride=2, padding=1, groups=2, input_grad=False),  # a first layer: filters only
    ],
)
@pytest.mark.parametrize("split", [False, True], ids=["one_graph", "two_graphs"])
def test_fused_equals_eager(geom, split, monkeypatch):
    # Large layers compile their backward as two graphs around the convolution, small ones as one.
    monkeypatch.setattr(functional, "SPLIT_BACKWARD_NUMEL", 0 if split else 1 << 62)
    torch.manual_seed(0)
    x = torch.randn(16, 4, 32, 32) * 3 + 1
    w = torch.randn(16, 4 // geom.get("groups", 1), 3, 3)
    assert x.numel() >= _fusion.MIN_NUMEL  # large enough to take the compiled path
    _fusion.set_fusion(False)
    try:
        eager = _forward_backward(x, w, **geom)
    finally:
        _fusion.set_fusion(True)
    fused = _forward_backward(x, w, **geom)
    assert _fusion.fusion_enabled(), "the compiled path failed and fell back to eager"
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _compile_raising(error: Exception):
    """A stand-in for torch.compile whose compiled functions raise ``error``."""

    def compile_(fn, **kwargs):
        def run(*args):
            raise error

        return run

    return compile_


def test_fusion_falls_back_to_eager_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch, "compile", _compile_raising(RuntimeError("no compiler here")))
    monkeypatch.setattr(_fusion, "_compiled", {})
    x, w = torch.randn(16, 4, 32, 32), torch.randn(16, 4, 3, 3)
    _fusion.set_fusion(False)
    expected = ssim_conv2d(x, w, padding=1)
    _fusion.set_fusion(True)
    try:
        with pytest.warns(RuntimeWarning, match="no compiler here"):
            out = ssim_conv2d(x, w, padding=1)
        assert not _fusion.fusion_enabled()
    finally:
        _fusion.set_fusion(True)
    torch.testing.assert_close(out, expected)


def _scale(x, w):
    return x * w.sum()


def test_each_configuration_has_its_own_compiled_copy(monkeypatch, recwarn):
    # Dynamo allows 8 recompilations per function: a model with more differently shaped layers
    # must keep the compiled path for all of them.
    monkeypatch.setattr(_fusion, "_compiled", {})
    _fusion.set_fusion(True)
    x = torch.randn(4, 1 << 14)
    for size in range(1, 11):
        w = torch.randn(size, 2)
        torch.testing.assert_close(_fusion.fused(_scale, x, x, w), x * w.sum())
    assert _fusion.fusion_enabled()
    assert len(_fusion._compiled) == 10
    assert not [w for w in recwarn if "ssimlayer" in str(w.message)]
    # Another batch size is the same configuration (the batch dimension is dynamic).
    _fusion.fused(_scale, x[:3], x[:3], torch.randn(10, 2))
    assert len(_fusion._compiled) == 10


def test_a_configuration_past_the_recompile_limit_runs_eagerly(monkeypatch):
    class FailOnRecompileLimitHit(Exception):  # the name is what fused recognises
        pass

    error = FailOnRecompileLimitHit("recompile_limit reached")
    monkeypatch.setattr(torch, "compile", _compile_raising(error))
    monkeypatch.setattr(_fusion, "_compiled", {})
    monkeypatch.setattr(_fusion, "_warned", set())
    _fusion.set_fusion(True)
    x, w = torch.randn(4, 1 << 14), torch.randn(3, 2)
    with pytest.warns(RuntimeWarning, match="recompile limit"):
        out = _fusion.fused(_scale, x, x, w)
    torch.testing.assert_close(out, x * w.sum())
    assert _fusion.fusion_enabled()  # the other configurations stay compiled
    (entry,) = _fusion._compiled.values()
    assert entry is _scale  # this one is eager from now on


def test_functional_imports_no_accelerator():
    """The maths sits at the bottom of the layer's import graph: the accelerators import it and
    register themselves (``import ssimlayer`` imports them), never the other way round."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(functional))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [name for name in imported if name and name.startswith("ssimlayer")], imported
    assert functional._ACCELERATORS == [_fusion.accelerated_eq8]


def test_without_fusion_the_accelerator_leaves_the_eager_path(monkeypatch):
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    assert _fusion.accelerated_eq8(x, w, 1e-4, 9e-4, geometry) is not None
    assert _fusion.accelerated_eq8(x.double(), w.double(), 1e-4, 9e-4, geometry) is None
    _fusion.set_fusion(False)
    assert _fusion.accelerated_eq8(x, w, 1e-4, 9e-4, geometry) is None
