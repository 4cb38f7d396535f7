"""CUDA: the Triton kernels and the torch.compile path against the float64 reference.

Run with ``pytest -m gpu``; tests/test_triton_kernels.py also runs its kernel tests on CUDA there.
"""

import pytest
import torch

from ssimlayer import _fusion, ssim_conv2d
from tests.reference import ssim_conv2d_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def exact_float32():
    """Full float32 convolutions and matmuls (no TF32, old and new switches), so differences are
    the layer's own."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        getattr(conv, "fp32_precision", None),
    )
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if saved[2] is not None:
        conv.fp32_precision = "ieee"
    _fusion.set_fusion(True)
    _fusion.set_triton(True)
    yield
    _fusion.set_triton(True)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
    if saved[2] is not None:
        conv.fp32_precision = saved[2]


@pytest.mark.parametrize("path", ["triton", "inductor"])
@pytest.mark.parametrize("geom", [dict(padding=1), dict(stride=2, padding=3, groups=2)])
def test_cuda_fused_matches_float64_reference(exact_float32, geom, path):
    torch.manual_seed(0)
    groups = geom.get("groups", 1)
    kernel = 3 if geom["padding"] == 1 else 7
    x = torch.randn(16, 4, 32, 32) * 2 + 0.5
    w = torch.randn(16, 4 // groups, kernel, kernel)
    g = torch.randn_like(ssim_conv2d_reference(x.double(), w.double(), **geom))

    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    (ssim_conv2d_reference(x64, w64, **geom) * g.double()).sum().backward()

    xc, wc = x.cuda().requires_grad_(), w.cuda().requires_grad_()
    _fusion.set_triton(path == "triton")
    out = ssim_conv2d(xc, wc, **geom)
    (out * g.cuda().float()).sum().backward()
    assert _fusion.fusion_enabled(), "the compiled CUDA path failed and fell back to eager"
    if path == "triton":
        assert _fusion.triton_eq8(xc, wc) is not None, "the Triton kernels failed to run"
    ref = ssim_conv2d_reference(x.double(), w.double(), **geom)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xc.grad.double().cpu(), x64.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(wc.grad.double().cpu(), w64.grad, rtol=1e-3, atol=1e-3)


def test_cuda_gradcheck_float64():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ssim_conv2d(a, b, padding=1), (x, w))


def test_cuda_bfloat16_autocast_keeps_float32_statistics():
    x = torch.randn(32, 16, 16, 16, device="cuda") * 100
    w = torch.randn(32, 16, 3, 3, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = ssim_conv2d(x, w, padding=1)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, ssim_conv2d(x, w, padding=1))


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_cuda_graphed_training_steps_match_eager_steps(exact_float32, autocast):
    """A small SSIM network trained 8 steps eagerly and 8 steps through GraphedTrainStep (2 eager,
    then a real CUDA graph capture and 6 replays, one of them of another batch shape's graph)."""
    from torch import nn

    from ssimlayer import SSIMConv2d
    from ssimlayer.lightning.graphed_step import GraphedTrainStep
    from tests.test_graphed_step import sgd_training

    g = torch.Generator().manual_seed(0)
    sizes = [16, 16, 16, 16, 8, 8, 8, 16]
    batches = [
        (
            torch.randn(n, 3, 16, 16, generator=g).cuda(),
            torch.randint(0, 10, (n,), generator=g).cuda(),
        )
        for n in sizes
    ]

    def build():
        torch.manual_seed(1)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SSIMConv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
        ).cuda()  # fmt: skip
        return sgd_training(net, lr=0.01, bf16_autocast=autocast)

    net, opt, step = build()
    eager_losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        eager_losses.append(step(x, y)[1].item())
    expected = [p.detach().clone() for p in net.parameters()]

    net, opt, step = build()
    graphed = GraphedTrainStep(step, net.parameters(), warmup=2)
    losses = [graphed(x, y)[1].item() for x, y in batches]
    assert graphed.replays == 4 and len(graphed._graphs) == 2
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-5)
    assert losses == pytest.approx(eager_losses, **{"rel": tol["rtol"], "abs": tol["atol"]})
    for got, want in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, **tol)
    # A replay leaves .grad as it was; GraphedTrainStep points it at the replay's gradient buffers,
    # also after something set it to None (Lightning does before each validation).
    net.zero_grad(set_to_none=True)
    graphed(*batches[-1])
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
