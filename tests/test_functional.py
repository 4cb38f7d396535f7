"""ssim_conv2d against the slow unfold reference (float64), its analytic backward, and its edge cases."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from ssimlayer import functional
from ssimlayer.functional import (
    DEFAULT_C1,
    DEFAULT_C2,
    _general_forward,
    _keeps_sxy,
    ssim_conv2d,
)
from tests.reference import eq18_filter_gradient, ssim_conv2d_reference, ssim_conv2d_unfold

torch.manual_seed(0)

# (batch, c_in, c_out, height, width, kernel, stride, padding, dilation, groups)
GRID = [
    (0, 3, 4, 8, 8, 3, 1, 1, 1, 1),
    (1, 3, 4, 8, 8, 3, 1, 1, 1, 1),
    (3, 2, 5, 7, 11, 3, 1, 0, 1, 1),  # non-square, odd sizes
    (2, 4, 6, 9, 6, 1, 1, 0, 1, 1),  # 1x1 kernel: N = C_in
    (2, 3, 4, 10, 10, 5, 2, 2, 1, 1),
    (2, 3, 8, 16, 12, 7, 1, 3, 1, 1),
    (2, 3, 4, 12, 12, (3, 5), (2, 1), (1, 2), 1, 1),  # rectangular kernel, mixed stride/padding
    (2, 2, 4, 12, 12, 3, 1, 2, 2, 1),  # dilation
    (2, 4, 6, 8, 8, 3, 1, 1, 1, 2),  # groups
    (2, 6, 6, 8, 9, 3, 2, 1, 1, 3),  # groups + stride
    (2, 4, 4, 8, 8, 3, 1, 1, 1, 4),  # depthwise
    (1, 1, 3, 5, 5, 5, 1, 0, 1, 1),  # one output position
]


def _case(batch, c_in, c_out, h, w, k, stride, padding, dilation, groups, dtype=torch.float64):
    ks = (k, k) if isinstance(k, int) else k
    x = torch.randn(batch, c_in, h, w, dtype=dtype) * 2 + 0.5
    wt = torch.randn(c_out, c_in // groups, *ks, dtype=dtype)
    return x, wt, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)))
def test_matches_reference(case):
    x, w, geom = _case(*case)
    expected = ssim_conv2d_reference(x, w, **geom)
    out = ssim_conv2d(x, w, **geom)
    assert out.shape == F.conv2d(x, w, **geom).shape
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)))
def test_benchmark_unfold_reference_matches_literal_reference(case):
    x, w, geom = _case(*case)
    torch.testing.assert_close(
        ssim_conv2d_unfold(x, w, **geom), ssim_conv2d_reference(x, w, **geom)
    )


@pytest.mark.parametrize("case", GRID[1:], ids=lambda c: "-".join(map(str, c[1:])))
def test_backward_matches_reference_autograd(case):
    x, w, geom = _case(*case)
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    g = torch.randn_like(ssim_conv2d_reference(x, w, **geom))
    (ssim_conv2d(x1, w1, **geom) * g).sum().backward()
    (ssim_conv2d_reference(x2, w2, **geom) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 4, 6, 5, 3, 1, 1, 1, 1),
        (1, 4, 4, 7, 7, 3, 2, 1, 2, 2),
        (2, 2, 3, 5, 5, 1, 1, 0, 1, 1),
        (2, 1, 3, 3, 3, 3, 1, 1, 1, 1),  # expanding: backward recomputes Sxy in batch chunks
    ],
)
def test_gradcheck_input_and_weight(case):
    x, w, geom = _case(*case)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ssim_conv2d(a, b, **geom), (x, w))


@pytest.mark.parametrize(
    "size, kernel, stride, padding, dilation",
    [
        ((8, 11), (3, 3), (1, 1), (1, 1), (1, 1)),
        ((9, 6), (3, 5), (2, 1), (1, 2), (1, 1)),
        ((9, 11), (7, 7), (3, 2), (3, 3), (1, 1)),
        ((8, 8), (3, 3), (2, 2), (0, 0), (2, 1)),
        ((5, 6), (1, 1), (2, 3), (3, 0), (1, 1)),  # padding wider than the kernel
    ],
)
@pytest.mark.parametrize("as_slices", [True, False], ids=["slices", "convolution"])
def test_window_sums_and_their_adjoint_are_the_ones_kernel_convolutions(
    size, kernel, stride, padding, dilation, as_slices, monkeypatch
):
    # Slices everywhere but in eager CUDA, which runs the convolutions: both ways checked here.
    monkeypatch.setattr(functional, "_by_convolution", lambda t: not as_slices)
    t = torch.randn(2, 3, *size, dtype=torch.float64)
    ones = torch.ones(3, 1, *kernel, dtype=torch.float64)
    expected = F.conv2d(t, ones, None, stride, padding, dilation, 3)
    sums = functional._window_sums(t, kernel, stride, padding, dilation)
    torch.testing.assert_close(sums, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(expected)
    expected_t = torch.ops.aten.convolution_backward(
        g, t, ones, None, stride, padding, dilation, False, [0, 0], 3, [True, False, False]
    )[0]
    adjoint = functional._window_sums_adjoint(g, size, kernel, stride, padding, dilation)
    torch.testing.assert_close(adjoint, expected_t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("wanted", ["input", "weight"])
@pytest.mark.parametrize(
    "case",
    [
        (2, 4, 4, 6, 6, 3, 1, 1, 1, 2),  # Sxy saved
        (3, 2, 8, 5, 5, 3, 2, 1, 1, 1),  # expanding: Sxy recomputed in batch chunks
    ],
    ids=["saved", "recomputed"],
)
def test_one_gradient_alone_matches_reference(case, wanted):
    # The backward builds only the terms of the gradients asked for (a first layer needs no input
    # gradient): each alone must still be the reference's.
    x, w, geom = _case(*case)
    g = torch.randn_like(ssim_conv2d_reference(x, w, **geom))
    ours = (x if wanted == "input" else w).clone().requires_grad_()
    theirs = ours.detach().clone().requires_grad_()
    if wanted == "input":
        (ssim_conv2d(ours, w, **geom) * g).sum().backward()
        (ssim_conv2d_reference(theirs, w, **geom) * g).sum().backward()
    else:
        (ssim_conv2d(x, ours, **geom) * g).sum().backward()
        (ssim_conv2d_reference(x, theirs, **geom) * g).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-8, atol=1e-9)
    other = w if wanted == "input" else x
    assert other.grad is None


def test_gradcheck_with_larger_constants_and_bias():
    x, w, geom = _case(2, 3, 4, 6, 6, 3, 1, 1, 1, 1)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x.requires_grad_()
    w.requires_grad_()
    fn = lambda a, b, c: ssim_conv2d(a, b, c, c1=0.5, c2=0.2, **geom)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, bias))


def test_expanding_layers_recompute_sxy_and_others_save_it():
    x, w, _ = _case(3, 2, 8, 5, 5, 3, 1, 1, 1, 1)
    assert not _keeps_sxy(x, w, ((1, 1), (1, 1), (1, 1), 1))  # 8 maps from 2: recompute
    x, w, _ = _case(3, 4, 4, 5, 5, 3, 1, 1, 1, 1)
    assert _keeps_sxy(x, w, ((1, 1), (1, 1), (1, 1), 1))


def test_filter_gradient_is_eq18_for_one_window():
    x = torch.randn(1, 3, 3, 3, dtype=torch.float64) + 0.3
    w = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    ssim_conv2d(x, w, c1=0.01, c2=0.03).sum().backward()
    expected = eq18_filter_gradient(x[0], w[0].detach(), 0.01, 0.03)
    torch.testing.assert_close(w.grad[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("abg", [(0.5, 1.0, 2.0), (2.0, 0.7, 1.3), (1.0, 1.0, 3.0)])
def test_general_eq1_matches_reference(abg):
    alpha, beta, gamma = abg
    x, w, geom = _case(2, 3, 4, 8, 8, 3, 1, 1, 1, 1)
    out = ssim_conv2d(x, w, alpha=alpha, beta=beta, gamma=gamma, **geom)
    expected = ssim_conv2d_reference(x, w, alpha=alpha, beta=beta, gamma=gamma, **geom)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_general_eq1_with_c3_half_c2_is_eq8():
    x, w, geom = _case(2, 3, 4, 8, 8, 3, 1, 1, 1, 1)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    general = _general_forward(
        x, w, DEFAULT_C1, DEFAULT_C2, DEFAULT_C2 / 2, 1.0, 1.0, 1.0, geometry
    )
    torch.testing.assert_close(general, ssim_conv2d(x, w, **geom), rtol=1e-9, atol=1e-9)


def test_general_eq1_other_c3_matches_reference_and_has_gradient():
    x, w, geom = _case(2, 3, 4, 6, 6, 3, 1, 1, 1, 1)
    out = ssim_conv2d(x, w, c3=0.1, **geom)
    torch.testing.assert_close(out, ssim_conv2d_reference(x, w, c3=0.1, **geom))
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ssim_conv2d(a, b, gamma=2.0, **geom), (x, w))


def test_patch_against_itself_is_one():
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64) * 3
    assert ssim_conv2d(x, x).item() == pytest.approx(1.0, abs=1e-12)
    x32 = x.float()
    assert ssim_conv2d(x32, x32).item() == pytest.approx(1.0, abs=1e-6)
    # every general-form exponent keeps it at one as well
    assert ssim_conv2d(x, x, alpha=0.5, gamma=2.0).item() == pytest.approx(1.0, abs=1e-12)


def test_each_window_matching_its_filter_scores_one():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = x[:, :, 1:4, 2:5].clone()  # the window at output position (1, 2)
    out = ssim_conv2d(x, w)
    assert out[0, 0, 1, 2].item() == pytest.approx(1.0, abs=1e-12)
    assert (out < 1 + 1e-12).all()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0, 1e4])
def test_eq8_is_within_minus_one_and_one(scale):
    x = torch.randn(4, 3, 12, 12) * scale
    w = torch.randn(8, 3, 3, 3)
    out = ssim_conv2d(x, w, padding=1)
    assert out.abs().max() <= 1 + 1e-5
    # a patch reflected about its mean (same mean and variance, correlation -1) scores -1
    patch = x[:1, :, :3, :3].double()
    mirrored = 2 * patch.mean() - patch
    assert ssim_conv2d(patch, mirrored, c1=1e-12, c2=1e-12).item() == pytest.approx(-1.0, abs=1e-5)


@pytest.mark.parametrize(
    "make_input",
    [
        torch.zeros,
        torch.ones,
        lambda *s: torch.full(s, -7.0),
        lambda *s: torch.randn(*s) * 1e4,
        lambda *s: torch.full(s, 1e4),
    ],
    ids=["zeros", "ones", "constant", "randn_1e4", "const_1e4"],
)
def test_no_nan_or_inf_on_degenerate_inputs(make_input):
    x = make_input(2, 3, 8, 8).requires_grad_()
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    out = ssim_conv2d(x, w, padding=1)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    w_zero = torch.zeros(4, 3, 3, 3, requires_grad=True)  # an all-zero filter too
    out = ssim_conv2d(x.detach(), w_zero, padding=1)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w_zero.grad).all()


def test_bfloat16_autocast_keeps_statistics_in_float32():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    expected = ssim_conv2d(x, w, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv = F.conv2d(x, w, padding=1)
        out = ssim_conv2d(x, w, padding=1)
    assert conv.dtype == torch.bfloat16  # autocast is really on
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tensors_are_computed_in_float32(dtype):
    x = (torch.randn(2, 3, 8, 8) * 50).to(dtype)
    w = torch.randn(4, 3, 3, 3).to(dtype)
    out = ssim_conv2d(x, w, padding=1)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = ssim_conv2d(x.float(), w.float(), padding=1)  # same rounded values, float32 maths
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=1e-2)


def test_non_contiguous_and_channels_last_inputs():
    x = torch.randn(2, 8, 3, 10, dtype=torch.float64).permute(0, 2, 1, 3)  # (2, 3, 8, 10) strided
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    expected = ssim_conv2d_reference(x.contiguous(), w, padding=1)
    torch.testing.assert_close(ssim_conv2d(x, w, padding=1), expected)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ssim_conv2d(x_cl, w, padding=1), expected)


def test_unbatched_input():
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    out = ssim_conv2d(x, w, padding=1)
    assert out.shape == (4, 8, 8)
    torch.testing.assert_close(out, ssim_conv2d(x[None], w, padding=1)[0])


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), (3, 2), ((2, 5), 1)])
def test_padding_same_and_valid(kernel, dilation):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    ks = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = torch.randn(4, 3, *ks, dtype=torch.float64)
    same = ssim_conv2d(x, w, padding="same", dilation=dilation)
    assert same.shape == F.conv2d(x, w, padding="same", dilation=dilation).shape
    th, tw = (dilation * (k - 1) for k in ks)
    padded = F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))
    torch.testing.assert_close(same, ssim_conv2d_reference(padded, w, dilation=dilation))
    torch.testing.assert_close(ssim_conv2d(x, w, padding="valid"), ssim_conv2d(x, w))


def test_bias_is_added():
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    b = torch.tensor([0.0, 1.0, -2.0, 3.0])
    torch.testing.assert_close(ssim_conv2d(x, w, b), ssim_conv2d(x, w) + b.view(1, -1, 1, 1))


def test_no_grad_path_equals_autograd_path():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3, requires_grad=True)
    with torch.no_grad():
        plain = ssim_conv2d(x, w, padding=1)
    torch.testing.assert_close(ssim_conv2d(x, w, padding=1).detach(), plain, rtol=0, atol=0)


BAD_CALLS = [
    (dict(x=(3, 8), w=(4, 3, 3, 3)), ValueError, r"input of shape \(B, C_in, H, W\)"),
    (dict(x=(2, 3, 8, 8, 1), w=(4, 3, 3, 3)), ValueError, r"got \(2, 3, 8, 8, 1\)"),
    (dict(x=(2, 3, 8, 8), w=(4, 3, 3)), ValueError, r"weight of shape"),
    (dict(x=(2, 3, 8, 8), w=(4, 2, 3, 3)), ValueError, r"expects 2 input channels"),
    (dict(x=(2, 3, 8, 8), w=(4, 1, 3, 3), groups=2), ValueError, r"in_channels=3 is not divisible"),
    (
        dict(x=(2, 4, 8, 8), w=(3, 2, 3, 3), groups=2),
        ValueError,
        r"out_channels=3 is not divisible",
    ),
    (dict(x=(2, 3, 4, 4), w=(4, 3, 7, 7)), ValueError, r"larger than the padded input"),
    (dict(x=(2, 3, 4, 4), w=(4, 3, 3, 3), dilation=2), ValueError, r"extent 5"),
    (dict(x=(2, 1, 4, 4), w=(4, 1, 1, 1)), ValueError, r"N >= 2"),
    (dict(x=(2, 3, 8, 8), w=(4, 3, 3, 3), c1=-1.0), ValueError, r"c1 must be a finite number > 0"),
    (dict(x=(2, 3, 8, 8), w=(4, 3, 3, 3), c2=0.0), ValueError, r"c2 must be"),
    (dict(x=(2, 3, 8, 8), w=(4, 3, 3, 3), alpha=0.0), ValueError, r"alpha must be"),
    (dict(x=(2, 3, 8, 8), w=(4, 3, 3, 3), stride=0), ValueError, r"stride >= 1"),
    (dict(x=(2, 3, 8, 8), w=(4, 3, 3, 3), padding="full"), ValueError, r"'valid' or 'same'"),
    (dict(x=(2, 3, 8, 8), w=(4, 3, 3, 3), padding="same", stride=2), ValueError, r"stride 1"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_CALLS, ids=lambda v: str(v)[:40])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    kwargs = dict(kwargs)
    x, w = torch.randn(*kwargs.pop("x")), torch.randn(*kwargs.pop("w"))
    for _ in range(2):  # checks run once per configuration: a failed one must not be remembered
        with pytest.raises(error, match=match):
            ssim_conv2d(x, w, **kwargs)


def test_checks_are_remembered_per_configuration_only(monkeypatch):
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    monkeypatch.setattr(functional, "_checked", {})
    ssim_conv2d(x, w, padding=1)
    assert len(functional._checked) == 1
    ssim_conv2d(x, w, padding=1)  # the same configuration: nothing new
    assert len(functional._checked) == 1
    with pytest.raises(ValueError, match="c1 must be"):  # any argument changed is checked again
        ssim_conv2d(x, w, padding=1, c1=0.0)
    with pytest.raises(ValueError, match="bias must have shape"):
        ssim_conv2d(x, w, torch.zeros(3), padding=1)
    with pytest.raises(ValueError, match="extent 3"):
        ssim_conv2d(x[..., :1, :1], w)
    # Lists cannot be remembered: checked every time, same result.
    assert torch.equal(ssim_conv2d(x, w, padding=[1, 1]), ssim_conv2d(x, w, padding=1))
    assert len(functional._checked) == 1
    monkeypatch.setattr(functional, "_CHECKED_MAX", 2)
    for size in (5, 6, 7):
        ssim_conv2d(torch.randn(1, 3, size, size), w)
    assert len(functional._checked) <= 2


def test_non_tensor_input_raises_type_error():
    with pytest.raises(TypeError, match="must be tensors, got list"):
        ssim_conv2d([[1.0]], torch.randn(4, 3, 3, 3))


def test_integer_input_raises_type_error():
    with pytest.raises(TypeError, match="floating point"):
        ssim_conv2d(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.randn(2, 3, 3, 3))


def test_bias_of_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        ssim_conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.zeros(3))


def test_grid_covers_batch_kernel_and_geometry():
    # The reference grid above must keep covering what the issue asks for.
    batches = {c[0] for c in GRID}
    kernels = {c[5] for c in GRID if isinstance(c[5], int)}
    assert {0, 1} <= batches and {1, 3, 5, 7} <= kernels
    assert any(c[3] != c[4] for c in GRID)
    assert {c[6] for c in GRID} - {1} and {c[8] for c in GRID} - {1} and {c[9] for c in GRID} - {1}
    assert list(itertools.chain(GRID))


def test_backward_copies_nothing_input_sized():
    """The backward's convolution gets the real input and filters, not expanded stand-ins that the
    CPU backend would first copy into full-size tensors. (The window terms, 2 maps per group, are
    padded for their window sums: a copy, but of 2 maps, not of the input's 8.)"""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    out = ssim_conv2d(x, w, padding=1)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out.backward(torch.randn_like(out))
    copies = [e.input_shapes for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
    assert not [s for s in copies if s and list(s[0]) == list(x.shape)], copies
    assert x.grad is not None and w.grad is not None
