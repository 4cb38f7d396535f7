"""The Triton kernels of Eq. 8 against the float64 reference.

Without a GPU the root conftest sets ``TRITON_INTERPRET=1`` (it must be set before triton is imported),
and Triton's interpreter runs the kernels on CPU tensors; with a GPU the same tests run the compiled
kernels on CUDA tensors.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.modules.utils import _pair
from torch.utils._python_dispatch import TorchDispatchMode

from ssimlayer import SSIMConv2d, functional
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


@pytest.mark.parametrize(
    "fused_conv, conv_backward, save_sxy",
    [(False, False, True), (True, False, True), (True, False, False), (True, True, False)],
    ids=["cudnn", "fused", "fused-recompute", "no-cudnn"],
)
def test_strided_gradient_and_channels_last_input(
    kernels, device, fused_conv, conv_backward, save_sxy
):
    """Kernels read through strides: an expanded gradient and a channels-last input need no copy
    (the fused kernels' outputs take the input's layout, as cuDNN's would)."""
    torch.manual_seed(2)
    x, w, geom = _tensors(device, 2, 4, 6, 9, 7, 3, 2, 1, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    ref = ssim_conv2d_reference(x.cpu(), w.cpu(), **geom)
    # Stride 0 everywhere, as the gradient of out.sum() arrives.
    grad = torch.tensor(0.5, dtype=torch.float64, device=device).expand(ref.shape)
    with _switches(kernels, fused_conv=fused_conv, conv_backward=conv_backward):
        _strided_gradient_and_channels_last_input(kernels, x, w, geom, grad, ref, save_sxy)


@contextlib.contextmanager
def _switches(kernels, fused_conv=None, conv_backward=None):
    """The kernels with the given switches (``set_fused_conv``, ``set_conv_backward``; None: as
    they are) inside the block, and as they were after it."""
    wanted = {kernels.set_fused_conv: fused_conv, kernels.set_conv_backward: conv_backward}
    previous = {setter: setter(value) for setter, value in wanted.items() if value is not None}
    try:
        yield kernels
    finally:
        for setter, value in previous.items():
            setter(value)


def _strided_gradient_and_channels_last_input(kernels, x, w, geom, grad, ref, save_sxy):
    out, box, ystat, s_xy = kernels.eq8_forward(x, w, 1e-4, 9e-4, _geometry(geom), save_sxy)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-9)
    grad_x, grad_w = kernels.eq8_backward(
        x, w, box, ystat, s_xy, grad, 1e-4, 9e-4, _geometry(geom), (True, True)
    )
    ref_x, ref_w = _reference_grads(x, w, geom, grad)
    torch.testing.assert_close(grad_x.cpu(), ref_x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_w.cpu(), ref_w, rtol=1e-9, atol=1e-9)


@pytest.fixture
def k_tile(kernels, request):
    """The kernels tile ``request.param`` filters at once in this test."""
    previous = kernels.set_filter_tile(request.param)
    yield request.param
    kernels.set_filter_tile(previous)


@pytest.mark.parametrize("k_tile", [4, 8, 16], indirect=True)
def test_every_filter_tile_matches_the_reference(kernels, device, k_tile):
    """12 filters: three full tiles of 4, a full and a partial tile of 8, one masked tile of 16."""
    torch.manual_seed(3)
    x, w, geom = _tensors(device, 2, 3, 12, 6, 7, 3, 1, 1, 1, 1)
    meta = kernels.forward_meta(w.shape, 1, 6 * 7)
    assert meta["K_TILE"] == k_tile and kernels.backward_meta(w.shape, 1, 6 * 7)["K_TILE"] == k_tile
    _check_against_reference(kernels, x, w, geom)


@pytest.fixture
def variant(kernels, request):
    """The kernels with another position block, the filter statistics computed once, or each
    block's work split among programs (``("split", (n, k_tile))``: at most n programs per block in
    each kernel, tiles of k_tile filters)."""
    knob, value = request.param
    if knob == "split":
        splits, k_tile = value
        previous = kernels.set_split(splits, splits, splits), kernels.set_filter_tile(k_tile)
        yield request.param
        kernels.set_split(*previous[0])
        kernels.set_filter_tile(previous[1])
        return
    setter = {
        "block": kernels.set_position_block,
        "stats_once": kernels.set_stats_once,
        "min_warps": kernels.set_min_warps,
        "fused_conv": kernels.set_fused_conv,
        "max_registers": kernels.set_max_registers,
        "taps_outside": kernels.set_taps_outside,
        "conv_backward": kernels.set_conv_backward,
    }[knob]
    previous = setter(value)
    yield request.param
    setter(previous)


@pytest.mark.parametrize(
    "variant",
    [
        ("block", 16),
        ("block", 128),
        ("stats_once", True),
        ("split", (1, 8)),
        ("split", (2, 8)),
        ("split", (4, 2)),
        ("min_warps", 4),
        ("fused_conv", True),
        ("max_registers", 128),
        ("taps_outside", True),
        ("conv_backward", True),
    ],
    indirect=True,
    ids=[
        "block16",
        "block128",
        "stats-once",
        "no-split",
        "split2",
        "split4-tile2",
        "warps4",
        "fused-conv",
        "registers128",
        "taps-outside",
        "conv-backward",
    ],
)
@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 12, 6, 7, 3, 1, 1, 1, 1),
        (2, 4, 6, 9, 7, 3, 2, 1, 1, 2),
        (2, 20, 6, 5, 6, 3, 1, 1, 2, 1),
    ],
    ids=["12-filters", "stride2-groups2", "20-channels-dilation2"],
)
def test_every_kernel_variant_matches_the_reference(kernels, device, variant, case):
    """The benchmark's knobs (experiments/bench/k_tile.py) change the schedule, not the results."""
    torch.manual_seed(3)
    x, w, geom = _tensors(device, *case)
    meta = kernels.forward_meta(w.shape, geom["groups"], 1)
    assert meta["STATS_ONCE"] == (variant == ("stats_once", True))
    _check_against_reference(kernels, x, w, geom)


@pytest.mark.parametrize(
    "k_per_group, k_tile, most, blocks, expected",
    [
        (64, 8, 1, 128, (1, 64)),  # no split: one program per block takes every tile
        (64, 8, 8, 128, (8, 8)),  # a tile each
        (64, 8, 3, 128, (3, 24)),  # 8 tiles among 3 programs: 3, 3 and 2 tiles
        (12, 4, 2, 128, (2, 8)),  # 3 tiles: 2 and 1
        (12, 4, 16, 128, (3, 4)),  # never more programs than tiles
        (3, 8, 4, 128, (1, 8)),  # one tile: nothing to split
        (64, 8, 0, 128, (4, 16)),  # automatic, 8x8 at batch 128: 4 x 128 programs
        (64, 8, 0, 2048, (1, 64)),  # automatic, 32x32 at batch 128: enough programs already
        (64, 8, 0, 1, (8, 8)),  # automatic, one block: a tile each
    ],
)
def test_the_split_covers_every_filter_once(kernels, k_per_group, k_tile, most, blocks, expected):
    assert kernels._SPLIT_PROGRAMS == 512
    splits, k_chunk = kernels.split_tiles(k_per_group, k_tile, most, blocks)
    assert (splits, k_chunk) == expected
    assert k_chunk % k_tile == 0 and (splits - 1) * k_chunk < k_per_group <= splits * k_chunk


def test_the_forward_splits_itself_into_at_most_two_programs_per_block(kernels):
    """Its programs each compute the patch sums again: 4 and 8 measured slower than 2 (see
    ``_FORWARD_AUTO_SPLIT``), while the backward's kernels split into 4 at 8x8, batch 128."""
    assert kernels.split_tiles(64, 8, 0, 128, cap=kernels._FORWARD_AUTO_SPLIT) == (2, 32)
    assert kernels.split_tiles(64, 8, 0, 128) == (4, 16)
    assert kernels.split_tiles(64, 8, 8, 128, cap=2) == (8, 8)  # a number set by hand stands


@pytest.fixture
def fused(kernels):
    """The forward computes Sxy inside its kernel in this test (``set_fused_conv``)."""
    with _switches(kernels, fused_conv=True):
        yield kernels


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-tap"])
@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)))
def test_the_fused_kernels_match_the_reference(fused, device, monkeypatch, case, flat):
    """Every geometry of the grid (empty batch, 1x1, stride, padding, dilation, groups, depthwise)
    with the convolution inside the forward kernel and Sxy not kept, as for a layer whose output
    is much larger than its input, so that the backward's coefficient kernel computes Sxy itself
    too (the variant test above keeps it); the grid's groups of 1 to 6 channels read both ways:
    values of the whole patch at a time (their default) and channels of one tap at a time."""
    monkeypatch.setattr(fused, "_FUSED_FLAT_CHANNELS", 16 if flat else 0)
    fused._clear_meta()
    try:
        torch.manual_seed(1)
        x, w, geom = _tensors(device, *case)
        assert fused.fused_forward_meta(w.shape, geom["groups"], 1, 1, False)[0]["FLAT"] == flat
        _check_against_reference(fused, x, w, geom, save_sxy=False)
    finally:
        monkeypatch.undo()
        fused._clear_meta()


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


@pytest.mark.parametrize("fused_conv", [False, True], ids=["cudnn", "fused"])
def test_a_backward_without_sxy_stores_it_only_where_not_fused(kernels, device, fused_conv):
    """A layer whose output is 8x its input does not keep Sxy: the cuDNN path's backward
    recomputes it with a convolution (one more output-sized tensor, one more launch); the fused
    coefficient kernel computes it in registers, and R is the only output-sized tensor made."""
    torch.manual_seed(5)
    x, w, geom = _tensors(device, 2, 3, 24, 8, 8, 5, 1, 2, 1, 1)
    with _switches(kernels, fused_conv=fused_conv):
        ops, out_shape = _backward_ops(kernels, x, w, geom, save_sxy=False)
    output_sized = [op for op, shape in ops if op in _MADE and shape == out_shape]
    assert output_sized == (["empty"] if fused_conv else ["convolution", "empty_like"])


@pytest.mark.parametrize("save_sxy", [True, False])
def test_the_fused_kernels_split_filters_beyond_what_a_program_holds(
    fused, device, monkeypatch, save_sxy
):
    """40 filters with programs of at most 16: three programs per block, the last one masked (in
    the backward's fused kernel too when Sxy is not kept)."""
    monkeypatch.setattr(fused, "_FUSED_FILTERS", 16)
    monkeypatch.setattr(fused, "_FUSED_BACKWARD_FILTERS", 16)
    monkeypatch.setattr(fused, "_SPLIT_PROGRAMS", 1)  # no automatic split of small launches
    fused._clear_meta()
    try:
        torch.manual_seed(4)
        x, w, geom = _tensors(device, 2, 5, 40, 6, 6, 3, 1, 1, 1, 1)
        for meta in (fused.fused_forward_meta, fused.fused_backward_meta):
            found, splits, k_chunk = meta(w.shape, 1, 36, 2, False)
            assert (splits, k_chunk, found["F_TILE"]) == (3, 16, 16)
        _check_against_reference(fused, x, w, geom, save_sxy)
    finally:
        monkeypatch.undo()
        fused._clear_meta()


@pytest.fixture
def no_cudnn(kernels):
    """Sxy inside the forward kernel and the convolution's backward inside the backward's last
    kernel in this test: no convolution by cuDNN either way."""
    with _switches(kernels, fused_conv=True, conv_backward=True):
        yield kernels


@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)))
def test_the_convolution_backward_in_the_kernels_matches_the_reference(no_cudnn, device, case):
    """Every geometry of the grid with the convolution's backward of R computed by
    ``_conv_window_terms_kernel`` (and Sxy inside the forward, not kept); the variant test above
    runs it after the cuDNN forward with Sxy kept."""
    torch.manual_seed(4)
    x, w, geom = _tensors(device, *case)
    _check_against_reference(no_cudnn, x, w, geom, save_sxy=False)


def test_the_convolution_backward_shares_its_work_among_programs(kernels, device, monkeypatch):
    """Tiles of 16 and a target of 40 programs: 40 filters in three tiles, 20 channels x 9 taps
    in twelve tiles of filter values, the batch's rows of positions split; the input programs'
    20 channels split in two (the window split), the second taking a partial tile."""
    monkeypatch.setattr(kernels, "_CONV_TILE", 16)
    monkeypatch.setattr(kernels, "_CONV_FILTERS", 16)
    monkeypatch.setattr(kernels, "_CONV_PROGRAMS", 40)
    previous = kernels.set_conv_backward(True), kernels.set_split(window=2)
    try:
        torch.manual_seed(6)
        x, w, geom = _tensors(device, 3, 20, 40, 9, 8, 3, 1, 1, 1, 1)
        meta, programs = kernels.conv_window_terms_meta(
            tuple(w.shape), 1, 9 * 8, 9 * 8, 3, (True, True), False
        )
        assert (meta["F_TILE"], meta["N_TILE"], meta["C_TILE"]) == (16, 16, 16)
        assert (programs["f_tiles"], programs["n_tiles"], programs["c_splits"]) == (3, 12, 2)
        assert programs["out_rows"] == 3 * 3  # 72 positions: rows of 32, two full, one partial
        assert programs["conv_splits"] == 2 and programs["rows_per_split"] == 5
        _check_against_reference(kernels, x, w, geom)
        _check_against_reference(kernels, x, w, geom, save_sxy=False)
    finally:
        kernels.set_conv_backward(previous[0])
        kernels.set_split(*previous[1])
        monkeypatch.undo()
        kernels._clear_meta()


@pytest.mark.parametrize(
    "out_positions, batch, most, rows, splits",
    [
        (1024, 128, 512, 4096, 57),  # 64 -> 64, 32x32: 9 tiles of filter values, 72 rows each
        (64, 128, 512, 256, 52),  # 8x8: two rows of 32 positions per image, 5 rows each
        (16, 1, 512, 1, 1),  # one row: nothing to split
        (64, 0, 512, 0, 0),  # an empty batch
        (1024, 128, 1, 4096, 1),  # one program per tile
    ],
)
def test_the_filter_gradient_sums_every_row_once(
    kernels, monkeypatch, out_positions, batch, most, rows, splits
):
    monkeypatch.setattr(kernels, "_CONV_PROGRAMS", most)
    monkeypatch.setattr(kernels, "_CONV_TILE", 64)  # 1 x 9 tiles of 64 filters x 64 values
    kernels._clear_meta()
    try:
        _, programs = kernels.conv_window_terms_meta(
            (64, 64, 3, 3), 1, out_positions, out_positions, batch, (True, True), True
        )
    finally:
        monkeypatch.undo()
        kernels._clear_meta()
    per = programs["rows_per_split"]
    names = kernels._conv_window_terms_kernel.arg_names
    start = names.index("conv_programs")  # the launch passes the dict's values in order
    assert list(programs) == names[start : start + len(programs)]
    assert (programs["out_rows"], programs["conv_splits"]) == (rows, splits)
    assert splits * per >= rows and (rows == 0 or rows > (splits - 1) * per)
    assert programs["conv_programs"] == splits * 9


@pytest.mark.parametrize("conv_backward", [False, True], ids=["cudnn", "kernels"])
def test_the_backward_convolves_only_where_asked(kernels, device, conv_backward):
    """``convolution_backward`` runs unless the kernels compute the convolution's backward; then
    the filter gradient is made as zeros (the kernel adds to it) and nothing output-sized but R."""
    torch.manual_seed(5)
    x, w, geom = _tensors(device, 2, 4, 6, 8, 8, 3, 1, 1, 1, 1)
    with _switches(kernels, conv_backward=conv_backward):
        ops, out_shape = _backward_ops(kernels, x, w, geom, save_sxy=True)
    names = [op for op, _ in ops]
    assert ("convolution_backward" in names) != conv_backward
    assert ("zeros_like" in names) == conv_backward
    assert [op for op, shape in ops if op in _MADE and shape == out_shape] == ["empty_like"]


def test_deterministic_algorithms_keep_the_convolution_backward(kernels, device):
    """The kernels' filter gradient adds with atomics, in no fixed order: a user who asks for
    deterministic algorithms gets ``convolution_backward`` (deterministic under that setting)."""
    x, w, geom = _tensors(device, 2, 4, 6, 8, 8, 3, 1, 1, 1, 1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with _switches(kernels, conv_backward=True):
            ops, _ = _backward_ops(kernels, x, w, geom, save_sxy=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert "convolution_backward" in [op for op, _ in ops]


def test_the_convolution_backward_schedule_knob_checks_its_values(kernels):
    previous = kernels.set_conv_schedule(tile=64, warps=4, stages=3, step=16)
    try:
        meta, _ = kernels.conv_window_terms_meta(
            (64, 64, 3, 3), 1, 1024, 1024, 128, (True, True), True
        )
        assert (meta["F_TILE"], meta["N_TILE"], meta["C_TILE"]) == (64, 64, 64)
        assert (meta["K_STEP"], meta["OUT_BLOCK"]) == (16, 16)
        assert (meta["num_warps"], meta["num_stages"]) == (4, 3)
        with pytest.raises(ValueError, match="tile must be one of"):
            kernels.set_conv_schedule(tile=48)
        with pytest.raises(ValueError, match="warps must be one of"):
            kernels.set_conv_schedule(warps=3)
        with pytest.raises(ValueError, match="stages must be one of"):
            kernels.set_conv_schedule(stages=0)
    finally:
        kernels.set_conv_schedule(*previous)


def test_the_fused_backward_holds_fewer_filters_per_program_than_the_forward(kernels):
    """64 filters in a launch of many blocks (no automatic split): one forward program holds all
    64, the backward's coefficient terms are split in two programs of 32."""
    forward, forward_splits, _ = kernels.fused_forward_meta((64, 64, 3, 3), 1, 1024, 2048, True)
    backward, backward_splits, _ = kernels.fused_backward_meta((64, 64, 3, 3), 1, 1024, 2048, True)
    assert (forward_splits, forward["F_TILE"]) == (1, 64)
    assert (backward_splits, backward["F_TILE"]) == (2, 32)


@pytest.mark.parametrize("switch", ["set_fused_conv", "set_conv_backward"])
def test_switching_the_convolutions_into_the_kernels_checks_every_configuration_again(
    kernels, switch
):
    from ssimlayer import _fusion

    setter = getattr(kernels, switch)
    previous = setter(False)
    try:
        _fusion.triton_checks.record("backward", ("some", "configuration"), True)
        setter(False)  # no change: the verdicts stay
        assert _fusion.triton_checks.checked("backward", ("some", "configuration"))
        setter(True)
        assert not _fusion.triton_checks.checked("backward", ("some", "configuration"))
    finally:
        setter(previous)
        _fusion.triton_checks.reset()


def test_the_fused_dot_rounds_to_tf32_only_where_cudnn_would(kernels):
    """float32 Sxy in TF32 exactly when a cuDNN convolution would be (PyTorch's default), never
    under the first-use check's full-float32 convolutions; float64 always in float64."""
    meta = kernels.fused_forward_meta
    assert kernels._conv_tf32() == torch.backends.cudnn.conv.fp32_precision.startswith("tf32")
    with functional._ieee_float32_convolutions():
        assert not kernels._conv_tf32()
    assert meta((8, 4, 3, 3), 1, 64, 4, True)[0]["PRECISION"] == "tf32"
    assert meta((8, 4, 3, 3), 1, 64, 4, False)[0]["PRECISION"] == "ieee"


def test_the_register_cap_reaches_every_position_blocked_kernel(kernels):
    previous = kernels.set_max_registers(96)
    try:
        w_shape = (8, 4, 3, 3)
        metas = [
            kernels.forward_meta(w_shape, 1, 64),
            kernels.backward_meta(w_shape, 1, 64),
            kernels.window_terms_meta(w_shape, 1, 64, 4, (True, True)),
            kernels.fused_forward_meta(w_shape, 1, 64, 4, False)[0],
            kernels.fused_backward_meta(w_shape, 1, 64, 4, False)[0],
        ]
        assert [meta["maxnreg"] for meta in metas] == [96] * 5
        kernels.set_max_registers(0)
        assert "maxnreg" not in kernels.forward_meta(w_shape, 1, 64)  # the compiler's choice
        with pytest.raises(ValueError, match="0 or 24 to 255"):
            kernels.set_max_registers(300)
    finally:
        kernels.set_max_registers(previous)


def test_the_fused_schedule_knob_checks_its_values(kernels):
    previous = kernels.set_fused_schedule(warps=4, stages=2)
    try:
        assert kernels.fused_forward_meta((8, 4, 3, 3), 1, 64, 4, False)[0]["num_warps"] == 4
        with pytest.raises(ValueError, match="warps must be"):
            kernels.set_fused_schedule(warps=3)
        with pytest.raises(ValueError, match="stages must be"):
            kernels.set_fused_schedule(stages=0)
    finally:
        kernels.set_fused_schedule(*previous)


def test_the_split_must_be_an_int_of_at_least_0(kernels):
    with pytest.raises(ValueError, match="window must be an int >= 0, got -1"):
        kernels.set_split(window=-1)
    current = (kernels._FORWARD_SPLIT, kernels._BACKWARD_SPLIT, kernels._WINDOW_SPLIT)
    assert kernels.set_split() == current


def test_the_position_block_must_be_a_power_of_two(kernels):
    with pytest.raises(ValueError, match="a power of two >= 16, got 24"):
        kernels.set_position_block(24)


@pytest.mark.parametrize("conv_backward", [False, True], ids=["cudnn", "kernels"])
@pytest.mark.parametrize("needs", [(True, False), (False, True)])
def test_only_the_needed_gradient_is_computed(kernels, device, needs, conv_backward):
    x, w, geom = _tensors(device, 2, 3, 4, 8, 8, 3, 1, 1, 1, 1)
    out, box, ystat, s_xy = kernels.eq8_forward(x, w, 1e-4, 9e-4, _geometry(geom), True)
    grad = torch.ones_like(out)
    with _switches(kernels, conv_backward=conv_backward):
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
        config = functional._triton_config(a, b, geometry)
        return functional._SSIMConv2dEq8Triton.apply(a, b, 1e-3, 2e-3, geometry, kernels, config)

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
    launched = [kernels._forward_launch, kernels._backward_launch, kernels._window_terms_launch]
    if kernels._STATS_ONCE:
        launched.append(kernels._filter_stats_launch)
    expected = [0 if INTERPRETED or launch not in launched else 2 for launch in kernels.LAUNCHERS]
    assert direct_launches == expected


@pytest.mark.parametrize(
    "fused_conv, conv_backward",
    [(False, False), (True, False), (True, True)],
    ids=["cudnn-sxy", "fused-sxy", "no-cudnn"],
)
@pytest.mark.parametrize(
    "case",
    [(4, 8, 8, 16, 16, 3, 1, 1, 1, 1), (4, 3, 24, 16, 16, 5, 1, 2, 1, 1)],
    ids=["sxy-kept", "sxy-recomputed"],  # the output 8x the input: the backward recomputes Sxy
)
def test_float32_kernels_agree_with_the_pytorch_path(
    kernels, device, fused_conv, conv_backward, case
):
    with (
        _switches(kernels, fused_conv=fused_conv, conv_backward=conv_backward),
        functional._ieee_float32_convolutions(),  # no TF32 on either side
    ):
        _float32_kernels_agree_with_the_pytorch_path(kernels, device, case)


def _float32_kernels_agree_with_the_pytorch_path(kernels, device, case):
    torch.manual_seed(3)
    x, w, geom = _tensors(device, *case, dtype=torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    geometry = _geometry(geom)
    config = functional._triton_config(x, w, geometry)
    out = functional._SSIMConv2dEq8Triton.apply(x, w, 1e-4, 9e-4, geometry, kernels, config)
    grad = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    ref = functional._SSIMConv2dEq8.apply(x, w, 1e-4, 9e-4, geometry)
    rx, rw = torch.autograd.grad(ref, (x, w), grad)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-3)


def test_cpu_tensors_take_the_pytorch_path():
    from ssimlayer import _fusion

    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert _fusion.triton_eq8(x, w) is None


def test_a_failing_kernel_falls_back_with_a_warning(monkeypatch):
    """If the Triton path raises (say, no compiler), the layer warns once and still answers."""
    from ssimlayer import _fusion

    class Broken:
        @staticmethod
        def eq8_forward(*args, **kwargs):
            raise RuntimeError("no CUDA compiler here")

    monkeypatch.setattr(functional, "triton_eq8", lambda x, w: Broken)
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
    from ssimlayer import _fusion

    def route(module):
        monkeypatch.setattr(functional, "triton_eq8", lambda x, w: module)
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
    from ssimlayer import _fusion

    counting = routed(_Counting(kernels))
    torch.manual_seed(4)
    x, w = torch.randn(2, 3, 6, 6, device=device), torch.randn(4, 3, 3, 3, device=device)
    for _ in range(2):
        got = _layer_step(x, w)
    runs = kernels.launches_per_check()  # 1 interpreted, 2 on a GPU (the second launch direct)
    assert counting.calls == {"forward": 2 + runs, "backward": 2 + runs}  # 2 steps + the checks
    assert not [r for r in recwarn if "disagree" in str(r.message)]
    config = functional._triton_config(x, w, ((1, 1), (1, 1), (1, 1), 1))
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
    assert result.stdout.count("OK ") == 7 * 3, result.stdout  # 7 kernels x 3 configurations


def test_first_use_checks_run_with_full_float32_convolutions():
    """TF32 convolutions (cuDNN's default) would make two correct paths differ; the check turns them
    off for itself and leaves the caller's setting as it was."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    with functional._ieee_float32_convolutions():
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
