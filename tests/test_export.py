"""torch.compile and ONNX: the layer survives the two ways researchers ship models."""

import warnings

import pytest
import torch
from torch import nn

from ssimlayer import SSIMConv2d, ssim_conv2d


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        SSIMConv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def test_torch_compile_equals_eager_forward_and_backward():
    model = _small_model()
    x = torch.rand(4, 3, 12, 12)
    compiled = torch.compile(model)
    eager_out, comp_out = model(x), compiled(x)
    torch.testing.assert_close(comp_out, eager_out, rtol=1e-4, atol=1e-5)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled(x).sum().backward()
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_torch_compile_traces_one_graph_without_warnings_or_recompiles():
    # The layer's eager caches (argument checks, keep-Sxy rule) stay out of the trace: no Dynamo
    # warning about them, no guard on them, so a new entry does not recompile the model.
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = _small_model()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.rand(4, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(x)
        ssim_conv2d(torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3))  # new eager cache entries
        torch.testing.assert_close(compiled(x), model(x))
    assert len(graphs) == 1


def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _small_model().eval()
    x = torch.rand(2, 3, 12, 12)
    path = tmp_path / "ssim.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(onnx_out - expected).max() < 1e-4
