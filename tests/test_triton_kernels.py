"""The Triton kernels of Eq. 8 against the float64 reference.

Without a GPU the root conftest sets ``TRITON_INTERPRET=1`` (it must be set before triton is imported),
and Triton's interpreter runs the kernels on CPU tensors; with a GPU the same tests run the compiled
kernels on CUDA tensors.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.modules.utils import _pair
from torch.utils._python_dispatch import TorchDispatchMode

from ssimlayer import SSIMConv2d, _fusion, functional
from tests.reference import ssim_conv2d_reference
from tests.test_functional import GRID, _case

pytest.importorskip("triton")
from ssimlayer import _triton_launch as launching  # noqa: E402  (needs triton)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(scope="module")
def device():
    if INTERPRETED:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1 set before triton is imported")


@pytest.fixture(scope="module")
def kernels(device):
    import ssimlayer._triton_eq8 as module

    return module


def _tensors(device, *case, **kwargs):
    x, w, geom = _case(*case, **kwargs)
    return x.to(device), w.to(device), geom


def _geometry(geom):
    padding = _pair(geom["padding"])
    return _pair(geom["stride"]), padding, _pair(geom["dilation"]), geom["groups"]


def _reference_grads(x, w, geom, grad):
    # Copies: for float64 CPU tensors .cpu().double() is the tensor itself, whose .grad would then
    # collect the gradients of every call.
    x64, w64 = (t.detach().cpu().double().clone().requires_grad_() for t in (x, w))
    (ssim_conv2d_reference(x64, w64, **geom) * grad.cpu().double()).sum().backward()
    return x64.grad, w64.grad


def _check_against_reference(kernels, x, w, geom, save_sxy=True, grad=None):
    """One forward and backward of the kernels against the float64 reference, to 1e-9; ``grad``
    is the output gradient (random if not given)."""
    geometry = _geometry(geom)
    ref = ssim_conv2d_reference(x.cpu(), w.cpu(), **geom)
    grad = torch.randn_like(ref).to(x.device) if grad is None else grad
    out, box, ystat, s_xy = kernels.eq8_forward(x, w, 1e-4, 9e-4, geometry, save_sxy)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-9)
    assert (s_xy is not None) == save_sxy
    grad_x, grad_w = kernels.eq8_backward(
        x, w, box, ystat, s_xy, grad, 1e-4, 9e-4, geometry, (True, True)
    )
    ref_x, ref_w = _reference_grads(x, w, geom, grad)
    torch.testing.assert_close(grad_x.cpu(), ref_x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_w.cpu(), ref_w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("save_sxy", [True, False])
def test_forward_and_backward_match_reference(kernels, device, case, save_sxy):
    torch.manual_seed(1)
    x, w, geom = _tensors(device, *case)
    _check_against_reference(kernels, x, w, geom, save_sxy)


def test_strided_gradient_and_channels_last_input(kernels, device):
    """Kernels read through strides: an expanded gradient and a channels-last input need no copy."""
    torch.manual_seed(2)
    x, w, geom = _tensors(device, 2, 4, 6, 9, 7, 3, 2, 1, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    ref = ssim_conv2d_reference(x.cpu(), w.cpu(), **geom)
    # Stride 0 everywhere, as the gradient of out.sum() arrives.
    grad = torch.tensor(0.5, dtype=torch.float64, device=device).expand(ref.shape)
    out, box, ystat, s_xy = kernels.eq8_forward(x, w, 1e-4, 9e-4, _geometry(geom), True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-9)
    grad_x, grad_w = kernels.eq8_backward(
        x, w, box, ystat, s_xy, grad, 1e-4, 9e-4, _geometry(geom), (True, True)
    )
    ref_x, ref_w = _reference_grads(x, w, geom, grad)
    torch.testing.assert_close(grad_x.cpu(), ref_x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_w.cpu(), ref_w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "k_per_group, k_tile, blocks, expected",
    [
        (64, 8, 128, (4, 16)),  # 8x8 at batch 128: 4 x 128 programs
        (64, 8, 2048, (1, 64)),  # 32x32 at batch 128: enough programs already
        (64, 8, 1, (8, 8)),  # one block: a tile each
        (12, 4, 1, (3, 4)),  # never more programs than tiles
        (3, 8, 1, (1, 8)),  # one tile: nothing to split
    ],
)
def test_the_split_covers_every_filter_once(kernels, k_per_group, k_tile, blocks, expected):
    """Launches of fewer than 512 programs share each block's filters among programs (the small
    cases of every test here run split)."""
    assert kernels._SPLIT_PROGRAMS == 512
    splits, k_chunk = kernels.split_tiles(k_per_group, k_tile, blocks)
    assert (splits, k_chunk) == expected
    assert k_chunk % k_tile == 0 and (splits - 1) * k_chunk < k_per_group <= splits * k_chunk


def test_the_forward_splits_itself_into_at_most_two_programs_per_block(kernels):
    """Its programs each compute the patch sums again: 4 and 8 measured slower than 2 (see
    ``_FORWARD_AUTO_SPLIT``), while the backward's kernels split into 4 at 8x8, batch 128."""
    assert kernels.split_tiles(64, 8, 128, cap=kernels._FORWARD_AUTO_SPLIT) == (2, 32)
    assert kernels.split_tiles(64, 8, 128) == (4, 16)


class _OpsSeen(TorchDispatchMode):
    """Records each ATen op with the shape of its result (None for several results)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        self.ops.append((func.overloadpacket.__name__, shape))
        return out


def _backward_ops(kernels, x, w, geom, save_sxy: bool) -> tuple[list, tuple]:
    """The ATen ops (with their results' shapes) of one backward of the kernels after a forward
    that kept Sxy or not, and the output's shape."""
    geometry = _geometry(geom)
    out, box, ystat, s_xy = kernels.eq8_forward(x, w, 1e-4, 9e-4, geometry, save_sxy)
    grad = torch.randn_like(out)
    seen = _OpsSeen()
    with seen:
        kernels.eq8_backward(x, w, box, ystat, s_xy, grad, 1e-4, 9e-4, geometry, (True, True))
    return seen.ops, tuple(out.shape)


_MADE = {"empty", "empty_like", "empty_strided", "new_empty", "convolution"}  # new tensors


def test_a_backward_without_sxy_recomputes_it_once(kernels, device):
    """A layer whose output is 8x its input does not keep Sxy: the backward recomputes it with a
    convolution, and R is the only other output-sized tensor made."""
    torch.manual_seed(5)
    x, w, geom = _tensors(device, 2, 3, 24, 8, 8, 5, 1, 2, 1, 1)
    ops, out_shape = _backward_ops(kernels, x, w, geom, save_sxy=False)
    output_sized = [op for op, shape in ops if op in _MADE and shape == out_shape]
    assert output_sized == ["convolution", "empty_like"]


@pytest.mark.parametrize("needs", [(True, False), (False, True)])
def test_only_the_needed_gradient_is_computed(kernels, device, needs):
    x, w, geom = _tensors(device, 2, 3, 4, 8, 8, 3, 1, 1, 1, 1)
    out, box, ystat, s_xy = kernels.eq8_forward(x, w, 1e-4, 9e-4, _geometry(geom), True)
    grad = torch.ones_like(out)
    grad_x, grad_w = kernels.eq8_backward(
        x, w, box, ystat, s_xy, grad, 1e-4, 9e-4, _geometry(geom), needs
    )
    ref_x, ref_w = _reference_grads(x, w, geom, grad)
    assert (grad_x is None) != needs[0] and (grad_w is None) != needs[1]
    if needs[0]:
        torch.testing.assert_close(grad_x.cpu(), ref_x, rtol=1e-9, atol=1e-9)
    else:
        torch.testing.assert_close(grad_w.cpu(), ref_w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "case,fast",
    [((1, 2, 2, 4, 5, 2, 1, 1, 1, 1), False), ((2, 4, 4, 7, 7, 3, 2, 1, 2, 2), True)],
    ids=["plain-every-element", "stride-dilation-groups-projected"],
)
def test_gradcheck_of_the_triton_autograd_function(kernels, device, case, fast):
    """Every element on a tiny layer; a random projection (fast mode) on a larger geometry, since
    the interpreter makes each forward slow."""
    x, w, geom = _tensors(device, *case)
    x.requires_grad_()
    w.requires_grad_()
    geometry = _geometry(geom)

    def layer(a, b):
        config = _fusion._triton_config(a, b, geometry)
        return _fusion._SSIMConv2dEq8Triton.apply(a, b, 1e-3, 2e-3, geometry, kernels, config)

    assert torch.autograd.gradcheck(layer, (x, w), fast_mode=fast)


class _FakeJIT:
    """A stand-in for a ``@triton.jit`` kernel: records what the JIT would bind, in parameter
    order, and hands back a compiled kernel (None, as the interpreter does, if ``interpreted``)."""

    arg_names = ["x_ptr", "n", "c1", "BLOCK", "KH"]

    def __init__(self, kernels, interpreted=False):
        self.bound, self.compiled = [], None if interpreted else _fake_compiled(kernels)

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.bound.append((grid, (*args, *(meta[n] for n in self.arg_names[len(args) :]))))
            return self.compiled

        return launch


def _fake_compiled(kernels, error=None):
    """A compiled kernel that records its direct launches, or raises ``error`` on each."""

    class FakeCompiled(launching.CompiledKernel):
        def __init__(self):  # no binary
            self.launched = []

        def __getitem__(self, grid):  # Triton's launcher reads all three grid sizes
            if error is not None:
                raise error
            return lambda *args: self.launched.append(((grid[0], grid[1], grid[2]), args))

        def __del__(self):  # nothing loaded to unload
            pass

    return FakeCompiled()


@pytest.fixture
def direct(kernels):
    previous = kernels.set_direct_launch(True)
    yield
    kernels.set_direct_launch(previous)


def test_repeated_launches_skip_the_jit_with_the_same_arguments(kernels, direct):
    fake = _FakeJIT(kernels)
    launch = launching.Launcher(fake, pointers=1)
    x = torch.zeros(8)
    meta = dict(BLOCK=64, KH=3, num_warps=2)  # num_warps is an option, not a parameter
    launch((4,), x, 7, 1e-4, **meta)
    launch((4,), x, 7, 1e-4, **meta)
    launch((5,), torch.ones(8), 7, 1e-4, **meta)  # another tensor, same dtype and alignment
    assert len(fake.bound) == 1 and launch.direct_launches == 2
    # Directly launched with the grid in three sizes and every parameter in order, as the JIT bound
    # them (a one-size grid raised IndexError inside Triton 3.6's launcher on an H200).
    assert fake.compiled.launched[0] == ((4, 1, 1), fake.bound[0][1])
    assert fake.compiled.launched[1][0] == (5, 1, 1) and fake.compiled.launched[1][1][1:] == (
        7, 1e-4, 64, 3,
    )  # fmt: skip


def test_a_failing_direct_launch_falls_back_to_the_jit(kernels, direct):
    """A Triton whose compiled kernels take other launch arguments: warned once, then every launch
    goes through the JIT, the failed one included."""
    fake = _FakeJIT(kernels)
    fake.compiled = _fake_compiled(kernels, IndexError("tuple index out of range"))
    launch = launching.Launcher(fake, pointers=1)
    x = torch.zeros(8)
    launch((4,), x, 7, 1e-4, BLOCK=64, KH=3)
    with pytest.warns(RuntimeWarning, match="directly failed .*IndexError.*through Triton's JIT"):
        launch((4,), x, 7, 1e-4, BLOCK=64, KH=3)
    assert len(fake.bound) == 2 and launch.direct_launches == 0
    assert kernels.launches_per_check() == 1 and not any(lc.compiled for lc in kernels.LAUNCHERS)
    launch((4,), x, 7, 1e-4, BLOCK=64, KH=3)  # no warning again: the JIT from now on
    assert len(fake.bound) == 3


@pytest.mark.parametrize(
    "change",
    ["int", "float", "compile-time", "dtype", "alignment"],
)
def test_what_the_jit_specialises_on_goes_through_the_jit_again(kernels, direct, change):
    fake = _FakeJIT(kernels)
    launch = launching.Launcher(fake, pointers=1)
    x = torch.zeros(16)
    launch((1,), x, 16, 1e-4, BLOCK=64, KH=3)
    args, meta = [x, 16, 1e-4], dict(BLOCK=64, KH=3)
    if change == "int":
        args[1] = 17  # 16 is specialised as a multiple of 16, 17 is not
    elif change == "float":
        args[2] = 2e-4  # a compile-time constant in the real kernels
    elif change == "compile-time":
        meta["KH"] = 5
    elif change == "dtype":
        args[0] = x.double()
    else:
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary
        assert x.data_ptr() % 16 == 0 and args[0].data_ptr() % 16 != 0
    launch((1,), *args, **meta)
    assert len(fake.bound) == 2 and launch.direct_launches == 0


def test_interpreted_or_switched_off_launches_always_use_the_jit(kernels, direct):
    interpreted = _FakeJIT(kernels, interpreted=True)
    launch = launching.Launcher(interpreted, pointers=1)
    for _ in range(3):
        launch((1,), torch.zeros(4), 1, 0.5, BLOCK=16, KH=1)
    assert len(interpreted.bound) == 3 and launch.direct_launches == 0

    fake = _FakeJIT(kernels)
    launch = launching.Launcher(fake, pointers=1)
    kernels.set_direct_launch(False)
    for _ in range(3):
        launch((1,), torch.zeros(4), 1, 0.5, BLOCK=16, KH=1)
    assert len(fake.bound) == 3 and not fake.compiled.launched


def test_tensors_after_the_leading_pointers_are_refused(kernels, direct):
    launch = launching.Launcher(_FakeJIT(kernels), pointers=1)
    with pytest.raises(TypeError, match="only the first 1 arguments may be tensors"):
        launch((1,), torch.zeros(4), torch.zeros(1), 0.5, BLOCK=16, KH=1)


def test_the_launcher_keeps_a_bounded_number_of_configurations(kernels, direct, monkeypatch):
    monkeypatch.setattr(launching.Launcher, "MAX_KEYS", 3)
    launch = launching.Launcher(_FakeJIT(kernels), pointers=1)
    for n in range(5):
        launch((1,), torch.zeros(4), n, 0.5, BLOCK=16, KH=1)
    assert len(launch.compiled) == 3


def test_repeated_real_launches_match_the_reference(kernels, device, direct):
    """The same configuration three times: on a GPU the second and third launch every kernel
    directly (see ``ssimlayer._triton_launch.Launcher``); each result still matches the float64 reference."""
    torch.manual_seed(6)
    x, w, geom = _tensors(device, 2, 3, 5, 7, 6, 3, 1, 1, 1, 1)
    for launch in kernels.LAUNCHERS:
        launch.compiled.clear()  # as if this configuration had never run
    before = [launch.direct_launches for launch in kernels.LAUNCHERS]
    for _ in range(3):
        _check_against_reference(kernels, x, w, geom)
    direct_launches = [launch.direct_launches - b for launch, b in zip(kernels.LAUNCHERS, before)]
    expected = [0 if INTERPRETED else 2 for _ in kernels.LAUNCHERS]
    assert direct_launches == expected


@pytest.mark.parametrize(
    "case",
    [(4, 8, 8, 16, 16, 3, 1, 1, 1, 1), (4, 3, 24, 16, 16, 5, 1, 2, 1, 1)],
    ids=["sxy-kept", "sxy-recomputed"],  # the output 8x the input: the backward recomputes Sxy
)
def test_float32_kernels_agree_with_the_pytorch_path(kernels, device, case):
    torch.manual_seed(3)
    x, w, geom = _tensors(device, *case, dtype=torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    geometry = _geometry(geom)
    with _fusion._ieee_float32_convolutions():  # no TF32 on either side
        config = _fusion._triton_config(x, w, geometry)
        out = _fusion._SSIMConv2dEq8Triton.apply(x, w, 1e-4, 9e-4, geometry, kernels, config)
        grad = torch.randn_like(out)
        gx, gw = torch.autograd.grad(out, (x, w), grad)
        ref = functional.eq8_pytorch(x, w, 1e-4, 9e-4, geometry)
        rx, rw = torch.autograd.grad(ref, (x, w), grad)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-3)


def test_cpu_tensors_take_the_pytorch_path():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert _fusion.triton_eq8(x, w) is None


def test_a_failing_kernel_falls_back_with_a_warning(monkeypatch):
    """If the Triton path raises (say, no compiler), the layer warns once and still answers."""

    class Broken:
        @staticmethod
        def eq8_forward(*args, **kwargs):
            raise RuntimeError("no CUDA compiler here")

    monkeypatch.setattr(_fusion, "triton_eq8", lambda x, w: Broken)
    monkeypatch.setattr(_fusion, "_triton_ok", True)
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    expected = ssim_conv2d_reference(x.double(), w.double(), padding=1).float()
    with pytest.warns(RuntimeWarning, match="no CUDA compiler here"):
        out = functional.ssim_conv2d(x, w, padding=1)
    assert not _fusion._triton_ok
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


class _Counting:
    """The real kernels, counting calls, with an optional error added to their results from call
    ``wrong_from`` on (1: every call)."""

    def __init__(self, kernels, forward_error=0.0, backward_error=0.0, wrong_from=1, runs=None):
        self.kernels, self.calls = kernels, {"forward": 0, "backward": 0}
        self.forward_error, self.backward_error = forward_error, backward_error
        self.wrong_from, self.runs = wrong_from, runs

    def launches_per_check(self):
        return self.kernels.launches_per_check() if self.runs is None else self.runs

    def _error(self, kind, error):
        self.calls[kind] += 1
        return error if self.calls[kind] >= self.wrong_from else 0.0

    def eq8_forward(self, *args, **kwargs):
        error = self._error("forward", self.forward_error)
        out, *rest = self.kernels.eq8_forward(*args, **kwargs)
        return (out + error, *rest)

    def eq8_backward(self, *args, **kwargs):
        error = self._error("backward", self.backward_error)
        return tuple(
            None if g is None else g * (1 + error)
            for g in self.kernels.eq8_backward(*args, **kwargs)
        )


@pytest.fixture
def routed(monkeypatch, kernels):
    """Send float32 CPU tensors through the Triton path (interpreted), with fresh first-use checks."""

    def route(module):
        monkeypatch.setattr(_fusion, "triton_eq8", lambda x, w: module)
        return module

    monkeypatch.setattr(_fusion, "_triton_ok", True)
    _fusion.triton_checks.reset()
    yield route
    _fusion.triton_checks.reset()


def _layer_step(x, w, layer=functional.ssim_conv2d):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = layer(x, w, padding=1)
    (
        out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    ).sum().backward()
    return out.detach(), x.grad, w.grad


def _reference_step(x, w):
    return _layer_step(x.cpu().double(), w.cpu().double(), ssim_conv2d_reference)


def test_first_use_check_passes_for_correct_kernels(routed, kernels, device, recwarn):
    counting = routed(_Counting(kernels))
    torch.manual_seed(4)
    x, w = torch.randn(2, 3, 6, 6, device=device), torch.randn(4, 3, 3, 3, device=device)
    for _ in range(2):
        got = _layer_step(x, w)
    runs = kernels.launches_per_check()  # 1 interpreted, 2 on a GPU (the second launch direct)
    assert counting.calls == {"forward": 2 + runs, "backward": 2 + runs}  # 2 steps + the checks
    assert not [r for r in recwarn if "disagree" in str(r.message)]
    config = _fusion._triton_config(x, w, ((1, 1), (1, 1), (1, 1), 1))
    assert _fusion.triton_checks.checked("forward", config)
    assert _fusion.triton_checks.checked("backward", config)
    assert _fusion.triton_checks.usable(config)
    for a, b in zip(got, _reference_step(x, w)):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_wrong_kernels_are_caught_on_first_use(routed, kernels, device, kind):
    """A kernel that is off by more than float32 rounding: warned about, replaced, never used again."""
    errors = {"forward_error": 0.1} if kind == "forward" else {"backward_error": 0.1}
    counting = routed(_Counting(kernels, **errors))
    torch.manual_seed(5)
    x, w = torch.randn(2, 3, 6, 6, device=device), torch.randn(4, 3, 3, 3, device=device)
    with pytest.warns(RuntimeWarning, match=f"Triton {kind} kernels disagree"):
        first = _layer_step(x, w)
    second = _layer_step(x, w)
    # The first step and its check; after that the PyTorch path only.
    runs = kernels.launches_per_check()
    assert counting.calls == {
        "forward": 1 + runs,
        "backward": 1 + runs if kind == "backward" else 0,
    }
    expected = _reference_step(x, w)
    for got in (first, second):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a.cpu().double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_a_wrong_second_launch_is_caught_by_the_first_use_check(routed, kernels, device, kind):
    """Where launches after a configuration's first are direct, the check runs the kernels twice: a
    direct launch that went wrong (say, arguments passed in another order by another Triton) is
    caught like a wrong kernel. Here the stand-in is wrong from its third call on: the step's own
    call and the check's first are right, the check's second is not."""
    errors = {"forward_error": 0.1} if kind == "forward" else {"backward_error": 0.1}
    routed(_Counting(kernels, **errors, wrong_from=3, runs=2))
    torch.manual_seed(5)
    x, w = torch.randn(2, 3, 6, 6, device=device), torch.randn(4, 3, 3, 3, device=device)
    with pytest.warns(RuntimeWarning, match=f"Triton {kind} kernels disagree"):
        got = _layer_step(x, w)
    for a, b in zip(got, _reference_step(x, w)):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-4, atol=1e-4)


def test_the_check_runs_the_kernels_twice_only_where_launches_can_be_direct(kernels):
    previous = kernels.set_direct_launch(False)
    try:
        assert kernels.launches_per_check() == 1
        kernels.set_direct_launch(True)
        assert kernels.launches_per_check() == (1 if launching.INTERPRETED else 2)
    finally:
        kernels.set_direct_launch(previous)


def test_inference_is_checked_too(routed, kernels, device):
    routed(_Counting(kernels, forward_error=0.1))
    x, w = torch.randn(2, 3, 6, 6, device=device), torch.randn(4, 3, 3, 3, device=device)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="Triton forward kernels disagree"):
        out = functional.ssim_conv2d(x, w, padding=1)
    expected = ssim_conv2d_reference(x.cpu().double(), w.cpu().double(), padding=1)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5)


def test_every_kernel_compiles_for_a_cuda_target():
    """Triton's compiler (front end to PTX), no GPU needed: catches what the interpreter accepts but
    the compiler rejects (say, a loop variable that changes shape), and float32 inside a float64
    kernel (a Python float argument is float32 when compiled, float64 when interpreted)."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(root / "tests" / "triton_compile_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK ") == 3 * 3, result.stdout  # 3 kernels x 3 configurations


def test_first_use_checks_run_with_full_float32_convolutions():
    """TF32 convolutions (cuDNN's default) would make two correct paths differ; the check turns them
    off for itself and leaves the caller's setting as it was."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    with _fusion._ieee_float32_convolutions():
        assert conv.fp32_precision == "ieee"
    assert conv.fp32_precision == saved


class _HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for the device (``.item()``, ``float()``, ``if t:``,
    data-dependent sizes) while ``active``, backward included (a dispatch mode sees the engine's ops
    on the calling thread, which is where CPU tensors run their backward)."""

    READS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero"}

    def __init__(self) -> None:
        super().__init__()
        self.active, self.count = False, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += self.active and func.overloadpacket.__name__ in self.READS
        return func(*args, **(kwargs or {}))


def test_training_steps_read_nothing_back_after_the_first_use_checks(routed, kernels, device):
    """On a GPU a host read waits for every queued kernel; the Triton path's only reads are its
    first-use checks (one forward, one backward per configuration), which the counter must see."""
    routed(kernels)
    layer = SSIMConv2d(4, 8, 3, padding=1, device=device)
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    reads = []
    with _HostReads() as counter:
        for _ in range(4):
            counter.active, counter.count = True, 0
            x.grad = None
            layer.zero_grad(set_to_none=True)
            out = layer(x)
            out.backward(torch.ones_like(out))
            reads.append(counter.count)
    assert reads[0] > 0 and reads[1:] == [0, 0, 0], reads
