"""Eq. 8 on CUDA with hand-written Triton kernels: few launches, one convolution each way.

The maths is :mod:`ssimlayer.functional`'s (the same five sums, the same closed-form backward); only
the scheduling differs. A forward is the convolution for Sxy and one kernel that computes the filter
statistics and Sx and Sxx of every patch in registers and applies Eq. 8 for the group's filters (all
of them, or a share where a launch would have few programs: see ``_FORWARD_SPLIT``); with
``_FUSED_CONV`` the forward kernel computes Sxy itself and the forward is one launch.
A backward is one kernel for the gradient coefficients, one ``convolution_backward`` for the input
and filter terms of R, and one kernel whose programs add the window terms to the input gradient or
the per-filter terms to the filter gradient; with ``_CONV_BACKWARD`` that last kernel computes the
input and filter terms of R too, and the backward calls no convolution. At the sizes of the paper
(a conv forward plus backward under a millisecond on a current GPU) the step is bound by how many
kernels are launched, which is why this path exists; tests compare it with the float64 reference,
also on the CPU through ``TRITON_INTERPRET=1``.

Layouts: ``box`` is ``(B, 2 G, Ho, Wo)`` with Sx for group g at channel g and Sxx at ``G + g`` (as in
:func:`ssimlayer.functional._patch_sums`); ``ystat`` is ``(2, C_out)``, the mean and unbiased
variance of each filter.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from ssimlayer import _fusion
from ssimlayer._triton_launch import Launcher, launches_per_check, set_direct_launch
from ssimlayer.functional import _conv_backward, _output_size

__all__ = ["eq8_forward", "eq8_backward", "launches_per_check", "set_direct_launch"]

# Output (or input) positions per program. 64 measured fastest of 128, 64, 32 and 16 on an H200
# (experiments/bench/k_tile.py, GPU time of the CUDA-graph-replayed step: 4 % less than 128 at
# the two 32x32 bench shapes; at 8x8 an image has 64 positions, so 64 and 128 are the same schedule).
_BLOCK = 64
_C_TILE = 8  # input channels read at once by the forward kernel
# Filters handled at once. 8 measured fastest of 16, 8 and 4 on an H200 (experiments/bench/k_tile.py,
# GPU time of the CUDA-graph-replayed step: 2-6 % less than 16 at the three bench shapes).
_K_TILE = 8
# Filter statistics computed by every forward program (False) or once per forward by their own
# launch (True: one launch more, and the forward programs stop re-reading all of their group's
# filters). On an H200, True took 1-3 % off the GPU time of the step at the 32x32 bench shapes but
# its extra launch added host time: the layer bench's wall-clock ratio at 8x8 went from 1.69-1.71
# to 1.80-1.83 (block 64 with True against the defaults of then, two paired runs), and a step at
# batch 128 is bound by the host, so False stays.
_STATS_ONCE = False
_N_BLOCK = 64  # values of each filter read at once for its statistics
_MIN_WARPS = 1  # warps per program: at least this, else by the position block (see _warps)
# Programs that share one block of positions, each with its own part of the group's filters, in the
# forward and in the gradient-coefficient kernel (at most one per filter tile). At 8x8 and batch
# 128 a block of 64 positions is a whole image, so one program per block makes 128 programs of 2
# warps for an H200's 132 SMs, and each forward program computes the statistics of all 64 filters
# one tile after another; splitting the filters makes more, shorter programs. The patch sums are
# then computed by each of them (from cache); in the backward each writes its own partial P and Q,
# which the window-terms kernel adds up. 1 = no split, n > 1 = at most n programs per block, 0 =
# automatic: split only launches of fewer than _SPLIT_PROGRAMS programs, into about that many, and
# the forward's into at most _FORWARD_AUTO_SPLIT. On an H200 at 8x8, batch 128 (automatic: 4 each),
# GPU microseconds per step of the forward / gradient-coefficient / window-terms kernels with the
# forward split in 1, 2, 4 or 8: 22.2 / 20.3 / 24.7 / 57.4 (each forward program computes the patch
# sums again); with the backward split in 1 or 4: 12.6 / 6.4, the window terms' in 1 or 4: 13.3 /
# 5.8 (experiments/bench/k_tile.py --split, results/k_tile_h200_split.json). At the 32x32 shapes
# a launch has 2,048 programs or more: no split.
_FORWARD_SPLIT = 0
_BACKWARD_SPLIT = 0
_FORWARD_AUTO_SPLIT = 2
# The same for the input channels of the window-terms kernel's input programs (each adds the window
# terms to its part of the channels of a block of pixels, summing P and Q over the windows itself).
_WINDOW_SPLIT = 0
_SPLIT_PROGRAMS = 512  # about 4 programs per SM on an H100 or H200 (132 SMs)
# Registers per thread the position-blocked kernels may use (Triton's ``maxnreg``; 0: as many as
# the compiler wants). Compiled with the lent H200s' Triton 3.6 (experiments/bench/
# triton_resources.py), the forward and gradient-coefficient kernels take 182-234 registers, so an
# SM holds 8-10 of its 64 warps; a cap of 128 doubles that for 24-168 bytes of spills per thread
# (Triton 3.8 compiles the same kernels to 106-152). Which is faster is for k_tile.py on a GPU.
_MAX_REGISTERS = 0
# The forward kernel's patch sums with the kernel's taps in the outer loop and the channels in the
# inner one (True), or the other way round (False, the default, timed on the GPUs so far). Compiled
# for sm_90 (triton_resources.py), registers per thread at 64 -> 64 32x32 / 3 -> 64 7x7 / 8x8,
# Triton 3.6 (the lent H200s'): 207 / 182 / 190 -> 166 / 143 / 140; Triton 3.8: 112 / 152 / 106 ->
# 72 / 79 / 72. With the taps inside, each step over the channels has all of the kernel's loads
# in flight at once, but the compiler keeps every tap's offsets and masks live across the loop.
_TAPS_OUTSIDE = False
# The forward's convolution for Sxy inside the forward kernel (True: ``_fused_forward_kernel``, one
# launch per forward, Sxy never written unless the backward keeps it) or by cuDNN before it (False,
# the default). The fused kernel multiplies each tile of patch values it reads for Sx and Sxx by
# the tile of filter values with ``tl.dot`` (TF32 where cuDNN would use TF32 for a float32
# convolution), so a program holds all its filters at once: at most _FUSED_FILTERS, more filters
# per group are split among programs. Not yet timed on a GPU (experiments/bench/k_tile.py
# --fused-conv); off until it is measured faster. SSIMLAYER_FUSED_CONV=1 (or set_fused_conv) turns
# it on.
_FUSED_CONV = os.environ.get("SSIMLAYER_FUSED_CONV", "0") == "1"
_FUSED_FILTERS = 64  # filters per program of the fused kernel (its Sxy tile is filters x positions)
# The same in the backward's fused kernel (for a forward that did not keep Sxy: the gradient
# coefficients computed from a Sxy it computes itself, instead of a convolution that recomputes
# it). Its coefficient terms are several tiles of that size at once, hence a smaller tile; a split
# costs only re-reading the input tiles, each program computes Sxy for its own filters only.
_FUSED_BACKWARD_FILTERS = 32
_FUSED_C_TILE = 16  # input channels per tl.dot (the smallest inner size tl.dot takes)
# Groups of fewer input channels than this take each tl.dot's 16 values from the whole patch in
# the filters' (channel, tap) order instead of from the channels of one tap (``_patch_dot``'s FLAT).
_FUSED_FLAT_CHANNELS = 16
# Warps per fused program and software-pipelining stages of its channel loops. Compiled (Triton 3.8)
# for sm_90 without a GPU (experiments/bench/triton_resources.py), registers per thread at 64 -> 64
# 32x32 / 8x8, with Sxy kept:
# 4 warps, 1 stage: 209 / 125; 4 warps, 2 stages: 250 / 145 (3 stages, Triton's default there:
# 255 and spills); 8 warps, 1 stage: 128 / 80; 8 warps, 2 stages: 140 / 122. With Sxy not kept, at
# 64 -> 64 32x32 / 3 -> 64 7x7 / 8x8, forward and backward kernel, under the lent H200s' Triton
# 3.6 (3.8 in brackets), 1 stage: 8 warps: forward 170 / 162 / 124 (108 / 116 / 64), backward 128
# with 24 bytes spilled / 142 / 102 (128 / 128 with 8 bytes spilled / 64 with 8); 16 warps:
# forward 90 / 88 / 64 (64 / 72 / 61), backward 94 / 94 / 73 (80 / 83 / 64), no spills, and twice
# the warps per SM at 32x32. Hence 16; which is faster is for k_tile.py on a GPU.
_FUSED_WARPS = 16
_FUSED_STAGES = 1
# The convolution's backward of R (its input and filter gradients) inside the backward's last
# launch (True: ``_conv_window_terms_kernel``, by ``tl.dot``, TF32 where cuDNN would use it) or by
# ``convolution_backward`` before it (False, the default). On an H200 convolution_backward cost 98
# us of host time per call at 8x8, batch 128 (experiments/bench/results/
# host_overhead_h200_host_gpu_split.json), for cuDNN's kernels and the layout conversions around
# them; the launch it joins was launched anyway. The filter gradient's programs each sum a share of
# the batch's positions and add it with atomic adds, so float32 sums are not bitwise repeatable
# (as cuDNN's are not by default); under torch.use_deterministic_algorithms(True) the backward
# uses convolution_backward. Not yet timed on a GPU (experiments/bench/k_tile.py
# --conv-backward); off until it is measured faster. SSIMLAYER_TRITON_CONV_BACKWARD=1 (or
# set_conv_backward) turns it on.
_CONV_BACKWARD = os.environ.get("SSIMLAYER_TRITON_CONV_BACKWARD", "0") == "1"
_CONV_PROGRAMS = 512  # the filter gradient's share of the batch: programs until about this many
# The tiles of its tl.dots (each side at least 16): ``_CONV_TILE`` channels of the input gradient
# and filter values of the filter gradient per tile of a result, ``_CONV_FILTERS`` filters per tile
# of the filter gradient (R is read again for each tile of filter values), ``_CONV_FILTER_STEP``
# filters per step of the input gradient's dot and ``_CONV_STEP`` output positions per step of
# the filter gradient's; warps and software-pipelining stages per program. Chosen by registers per
# thread, compiled for sm_90 without a GPU (experiments/bench/triton_resources.py --conv-backward),
# at 64 -> 64 32x32 / 3 -> 64 7x7 / 8x8 with the lent H200s' Triton 3.6 (this machine's 3.8 in
# brackets); tile, warps, stages:
# - the first version, 32 filters per filter-gradient tile and 32 per input-gradient step:
#   32, 8, 2: 190 / 182 / 128; 32, 8, 1: 181 / 149 / 118; 32, 4, 1: 255 with 88 bytes spilled;
#   64, 8, 1: 255 with 32 bytes spilled (tiles of 64 with 4 warps spilled under 3.8 too). The
#   input gradient's R tile (filters x positions, in tl.dot's operand layout, with its
#   addresses) took most of them: compiled alone (32, 8, 1), the input-gradient programs need
#   181 registers with 32 filters per step, 128 with 16, at 32x32;
# - with 64 filters per filter-gradient tile and 16 per input-gradient step: 32, 8, 2: 173 / 142
#   / 137 (104 / 100 / 106); 32, 8, 1: 160 / 137 / 126; 32, 4, 1: 255 / 206 / 204; 16, 8, 2:
#   128 / 128 / 130 (104 / 105 / 104); 32, 16, 2: 103 / 102 / 102 (94 / 64 / 96); 64, 8, 2:
#   255 with 40 bytes spilled / 254 / 212; **64, 16, 2** (the default): 128 / 128 / 126 (105 /
#   103 / 82), one program of 16 warps per SM, the input gradient's tiles covering 64 channels
#   (R read once per program) and the filter gradient's 64 filters x 64 values (R read once per 64
#   values). Which is fastest is for k_tile.py --conv-schedules on a GPU.
_CONV_TILE = 64
_CONV_STEP = 32
_CONV_FILTERS = 64
_CONV_FILTER_STEP = 16
_CONV_WARPS = 16
_CONV_STAGES = 2


@triton.jit
def _filter_stats_tile(w_ptr, f, k_ok, n, K_TILE: tl.constexpr, N_BLOCK: tl.constexpr):
    """Mean and unbiased variance of the filters ``f`` (contiguous rows of ``n`` values), as
    ``(K_TILE,)`` vectors: read N_BLOCK values of each row at a time."""
    dt = w_ptr.dtype.element_ty
    rows = w_ptr + f.to(tl.int64)[:, None] * n
    s = tl.zeros([K_TILE, N_BLOCK], dtype=dt)
    ss = tl.zeros([K_TILE, N_BLOCK], dtype=dt)
    for start in range(0, n, N_BLOCK):
        offs = start + tl.arange(0, N_BLOCK)
        v = tl.load(rows + offs[None, :], mask=k_ok[:, None] & (offs < n)[None, :], other=0.0)
        s += v
        ss += v * v
    mu = tl.sum(s, 1) / n
    var = tl.maximum((tl.sum(ss, 1) - mu * mu * n) / (n - 1), 0.0)
    return mu, var


@triton.jit
def _program_tile(pid, n_blocks, groups, size, BLOCK: tl.constexpr):
    """Program ``pid``'s batch index, group and BLOCK flat positions (of ``size``) with their mask."""
    bg, block = pid // n_blocks, pid % n_blocks
    offs = block * BLOCK + tl.arange(0, BLOCK)
    return bg // groups, bg % groups, block, offs, offs < size


@triton.jit
def _split_program(splits, n_blocks, groups, size, BLOCK: tl.constexpr):
    """This program's split (of ``splits`` programs sharing one block of positions) and the
    block's batch index, group, block and BLOCK flat positions (of ``size``) with their mask."""
    split = tl.program_id(0) % splits
    pid = (tl.program_id(0) // splits).to(tl.int64)
    b, g, block, offs, inside = _program_tile(pid, n_blocks, groups, size, BLOCK)
    return split, b, g, block, offs, inside


@triton.jit
def _split_filters(split, k_chunk, k_per_group, g, F_TILE: tl.constexpr):
    """The filters ``[split k_chunk, (split + 1) k_chunk)`` of group ``g`` as F_TILE lanes (global
    filter indices), with the mask of those that exist."""
    lanes = tl.arange(0, F_TILE)
    ks = split * k_chunk + lanes
    return g * k_per_group + ks, (lanes < k_chunk) & (ks < k_per_group)


@triton.jit
def _store_box(box_ptr, b, g, groups, size, offs, mask, first, second):
    """Write one block's two ``(BLOCK,)`` values of group ``g`` (Sx and Sxx, or P and Q) into an
    array laid out as ``box``: ``(B, 2 G, Ho, Wo)``, the first at channel g, the second at G + g."""
    at = box_ptr + b * (2 * groups * size) + offs
    tl.store(at + g * size, first, mask=mask)
    tl.store(at + (groups + g) * size, second, mask=mask)


@triton.jit
def _load_box(box_ptr, b, g, groups, size, offs, mask):
    """Read what :func:`_store_box` wrote: Sx and Sxx of one block of group ``g``."""
    at = box_ptr + b * (2 * groups * size) + offs
    return (
        tl.load(at + g * size, mask=mask, other=0.0),
        tl.load(at + (groups + g) * size, mask=mask, other=0.0),
    )


@triton.jit
def _patch_stats(s_x, s_xx, n):
    """Mean and unbiased variance of each patch from Sx and Sxx, as ``(1, BLOCK)`` rows.

    Scalars (n, c1, c2) come after a tensor in every expression of these kernels, so the arithmetic
    stays in the tensors' dtype (float64 included). C1 and C2 are compile-time constants
    (``tl.constexpr``): compiled Triton passes a Python float argument as float32, which would round
    them in float64 kernels (the interpreter does not), while a constant takes the tensors' dtype.
    Each (C1, C2) pair compiles its own variant.
    """
    mu = s_x / n
    var = tl.maximum((s_xx - s_x * mu) / (n - 1), 0.0)
    return mu[None, :], var[None, :]


@triton.jit
def _filter_tile(ystat_ptr, f, k_ok, c_out):
    """Mean and variance of the filters ``f`` as ``(K_TILE, 1)`` columns, from ``ystat``."""
    mu = tl.load(ystat_ptr + f, mask=k_ok, other=0.0)
    var = tl.load(ystat_ptr + c_out + f, mask=k_ok, other=0.0)
    return mu[:, None], var[:, None]


@triton.jit
def _eq8_terms(mu_x, var_x, mu_y, var_y, s_xy, n, c1, c2):
    """A1, B1 (luminance) and A2, B2 (contrast-structure) of Eq. 17; cov is Eq. 7 from Sxy."""
    cov = (s_xy - mu_x * mu_y * n) / (n - 1)
    a1 = mu_x * mu_y * 2 + c1
    b1 = mu_x * mu_x + mu_y * mu_y + c1
    a2 = cov * 2 + c2
    b2 = var_x + var_y + c2
    return a1, b1, a2, b2


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, sxy_ptr, out_ptr, ystat_ptr, box_ptr,
    c_in_g, h, w, h_out, w_out, k_per_group, groups, n_blocks, splits, k_chunk,
    sx_b, sx_c, sx_h, sx_w,
    ss_b, ss_c, ss_h, ss_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    n, c1: tl.constexpr, c2: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, C_TILE: tl.constexpr,
    K_TILE: tl.constexpr, N_BLOCK: tl.constexpr, STATS_ONCE: tl.constexpr,
    TAPS_OUTSIDE: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK output positions of one (batch, group) and the filters ``[s k_chunk,
    (s + 1) k_chunk)`` of the group, for the program's split ``s`` of ``splits`` (see
    ``_FORWARD_SPLIT``); the programs of split 0 write the patch sums.

    Channels are read C_TILE at a time and filters handled K_TILE at a time, as 2-D tiles, so that
    many loads are in flight at once. Unless STATS_ONCE, each program computes the statistics of
    its group's filters itself (re-reading the filters, which stay in cache, saves a launch) and
    the first program of each group writes them to ``ystat`` for the backward; with STATS_ONCE
    :func:`_filter_stats_kernel` has written ``ystat`` before and the programs read it.
    """
    split, b, g, block, offs, inside = _split_program(
        splits, n_blocks, groups, h_out * w_out, BLOCK
    )
    dt = x_ptr.dtype.element_ty
    oh, ow = offs // w_out, offs % w_out

    # Sx and Sxx of every patch: exactly the values conv2d multiplies, zero padding included.
    acc_x = tl.zeros([C_TILE, BLOCK], dtype=dt)
    acc_xx = tl.zeros([C_TILE, BLOCK], dtype=dt)
    x_group = x_ptr + b * sx_b + (g * c_in_g) * sx_c
    if TAPS_OUTSIDE:  # one tap's offsets live at a time, one load per step (see _TAPS_OUTSIDE)
        for i in tl.static_range(KH):
            ih = oh * stride_h - pad_h + i * dil_h
            row_ok = inside & (ih >= 0) & (ih < h)
            for j in tl.static_range(KW):
                iw = ow * stride_w - pad_w + j * dil_w
                pos_ok = (row_ok & (iw >= 0) & (iw < w))[None, :]
                x_tap = x_group + (ih * sx_h + iw * sx_w)[None, :]
                for c0 in range(0, c_in_g, C_TILE):
                    chans = c0 + tl.arange(0, C_TILE)
                    ok = (chans < c_in_g)[:, None] & pos_ok
                    v = tl.load(x_tap + chans.to(tl.int64)[:, None] * sx_c, mask=ok, other=0.0)
                    acc_x += v
                    acc_xx += v * v
    else:  # every tap's load in each step over the channels
        for c0 in range(0, c_in_g, C_TILE):
            chans = c0 + tl.arange(0, C_TILE)
            x_chans = x_group + chans.to(tl.int64)[:, None] * sx_c
            chan_ok = (chans < c_in_g)[:, None]
            for i in tl.static_range(KH):
                ih = oh * stride_h - pad_h + i * dil_h
                row_ok = inside & (ih >= 0) & (ih < h)
                for j in tl.static_range(KW):
                    iw = ow * stride_w - pad_w + j * dil_w
                    ok = chan_ok & (row_ok & (iw >= 0) & (iw < w))[None, :]
                    v = tl.load(x_chans + (ih * sx_h + iw * sx_w)[None, :], mask=ok, other=0.0)
                    acc_x += v
                    acc_xx += v * v
    s_x = tl.sum(acc_x, 0)
    s_xx = tl.sum(acc_xx, 0)
    _store_box(box_ptr, b, g, groups, h_out * w_out, offs, inside & (split == 0), s_x, s_xx)

    mu_x, var_x = _patch_stats(s_x, s_xx, n)
    c_out = groups * k_per_group
    pos = (b * ss_b + oh * ss_h + ow * ss_w)[None, :]
    first = (b == 0) & (block == 0)
    k_lo = split * k_chunk
    for k0 in range(k_lo, tl.minimum(k_lo + k_chunk, k_per_group), K_TILE):
        ks = k0 + tl.arange(0, K_TILE)
        k_ok = ks < k_per_group
        f = g * k_per_group + ks
        if STATS_ONCE:
            mu_y, var_y = _filter_tile(ystat_ptr, f, k_ok, c_out)
        else:
            mu_f, var_f = _filter_stats_tile(w_ptr, f, k_ok, n, K_TILE, N_BLOCK)
            tl.store(ystat_ptr + f, mu_f, mask=k_ok & first)
            tl.store(ystat_ptr + c_out + f, var_f, mask=k_ok & first)
            mu_y, var_y = mu_f[:, None], var_f[:, None]
        at = pos + f[:, None] * ss_c
        ok = k_ok[:, None] & inside[None, :]
        s_xy = tl.load(sxy_ptr + at, mask=ok, other=0.0)
        a1, b1, a2, b2 = _eq8_terms(mu_x, var_x, mu_y, var_y, s_xy, n, c1, c2)
        tl.store(out_ptr + at, (a1 * a2) / (b1 * b2), mask=ok)


@triton.jit
def _filter_stats_kernel(w_ptr, ystat_ptr, n, c_out, K_TILE: tl.constexpr, N_BLOCK: tl.constexpr):
    """``ystat`` for K_TILE filters per program, for the forward kernel's STATS_ONCE."""
    f = tl.program_id(0).to(tl.int64) * K_TILE + tl.arange(0, K_TILE)
    k_ok = f < c_out
    mu_f, var_f = _filter_stats_tile(w_ptr, f, k_ok, n, K_TILE, N_BLOCK)
    tl.store(ystat_ptr + f, mu_f, mask=k_ok)
    tl.store(ystat_ptr + c_out + f, var_f, mask=k_ok)


@triton.jit
def _flat_patch_values(
    x_group, kk, k_in, oh, ow, inside, h, w, sx_c, sx_h, sx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH: tl.constexpr, KW: tl.constexpr,
):  # fmt: skip
    """The values at places ``kk`` of the patches at ``(oh, ow)`` (masked by ``k_in`` and
    ``inside``), places counted in the filters' ``(channel, tap)`` order, as a ``(len(kk),
    len(oh))`` tile; ``x_group`` points at the image's group's first channel; zero padding."""
    tap = kk % (KH * KW)
    ih = (oh * stride_h - pad_h)[None, :] + ((tap // KW) * dil_h)[:, None]
    iw = (ow * stride_w - pad_w)[None, :] + ((tap % KW) * dil_w)[:, None]
    ok = (k_in[:, None] & inside[None, :]) & (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
    chan = (kk // (KH * KW)).to(tl.int64)[:, None] * sx_c
    return tl.load(x_group + chan + ih * sx_h + iw * sx_w, mask=ok, other=0.0)


@triton.jit
def _patch_dot(
    x_group, w_rows, k_ok, oh, ow, inside, c_in_g, h, w, sx_c, sx_h, sx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, C_TILE: tl.constexpr,
    F_TILE: tl.constexpr, PRECISION: tl.constexpr, STATS: tl.constexpr, FLAT: tl.constexpr,
):  # fmt: skip
    """Sxy of BLOCK patches (positions ``oh, ow`` of the image at ``x_group``, its group's first
    channel) with F_TILE filters (rows ``w_rows``, masked by ``k_ok``), as an ``(F_TILE, BLOCK)``
    tile, by ``tl.dot`` of C_TILE patch values at a time; and, if STATS, on the way, Sx and Sxx of
    the patches (``(BLOCK,)``) and the filters' sums and sums of squares (``(F_TILE,)``), else
    zeros for those.

    Unless FLAT, the C_TILE values are channels of one tap: taps outside, channels inside, so that
    one tap's offsets and masks are live at a time (with the channels outside, the compiler keeps
    every tap's across the channel loop: 255 registers and spills at 3x3,
    experiments/bench/triton_resources.py). With FLAT (for groups of fewer channels than C_TILE,
    such as an RGB input's 3) they are C_TILE consecutive values of the patch in the filters'
    (channel, tap) order, each with its own channel and tap: a 7x7 patch of 3 channels takes 10
    steps instead of 49 mostly masked ones.
    """
    dt = x_group.dtype.element_ty
    acc_x = tl.zeros([C_TILE, BLOCK], dtype=dt)
    acc_xx = tl.zeros([C_TILE, BLOCK], dtype=dt)
    acc_y = tl.zeros([F_TILE, C_TILE], dtype=dt)
    acc_yy = tl.zeros([F_TILE, C_TILE], dtype=dt)
    s_xy = tl.zeros([F_TILE, BLOCK], dtype=dt)
    if FLAT:
        n = c_in_g * KH * KW
        for k0 in range(0, n, C_TILE):
            kk = k0 + tl.arange(0, C_TILE)  # positions in a filter's row: (channel, i, j)
            k_in = kk < n
            v = _flat_patch_values(
                x_group, kk, k_in, oh, ow, inside, h, w, sx_c, sx_h, sx_w,
                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW,
            )  # fmt: skip
            y = tl.load(w_rows + kk[None, :], mask=k_ok[:, None] & k_in[None, :], other=0.0)
            if STATS:
                acc_x += v
                acc_xx += v * v
                acc_y += y
                acc_yy += y * y
            s_xy = tl.dot(y, v, s_xy, input_precision=PRECISION, out_dtype=dt)
    else:
        for i in tl.static_range(KH):
            ih = oh * stride_h - pad_h + i * dil_h
            row_ok = inside & (ih >= 0) & (ih < h)
            for j in tl.static_range(KW):
                iw = ow * stride_w - pad_w + j * dil_w
                pos_ok = (row_ok & (iw >= 0) & (iw < w))[None, :]
                x_tap = x_group + (ih * sx_h + iw * sx_w)[None, :]
                w_tap = w_rows + (i * KW + j)
                for c0 in range(0, c_in_g, C_TILE):
                    chans = c0 + tl.arange(0, C_TILE)
                    chan_ok = chans < c_in_g
                    v = tl.load(
                        x_tap + chans.to(tl.int64)[:, None] * sx_c,
                        mask=chan_ok[:, None] & pos_ok,
                        other=0.0,
                    )
                    y = tl.load(
                        w_tap + (chans * (KH * KW))[None, :],
                        mask=k_ok[:, None] & chan_ok[None, :],
                        other=0.0,
                    )
                    if STATS:
                        acc_x += v
                        acc_xx += v * v
                        acc_y += y
                        acc_yy += y * y
                    s_xy = tl.dot(y, v, s_xy, input_precision=PRECISION, out_dtype=dt)
    return tl.sum(acc_x, 0), tl.sum(acc_xx, 0), tl.sum(acc_y, 1), tl.sum(acc_yy, 1), s_xy


@triton.jit
def _fused_forward_kernel(
    x_ptr, w_ptr, sxy_ptr, out_ptr, ystat_ptr, box_ptr,
    c_in_g, h, w, h_out, w_out, k_per_group, groups, n_blocks, splits, k_chunk,
    sx_b, sx_c, sx_h, sx_w,
    ss_b, ss_c, ss_h, ss_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    n, c1: tl.constexpr, c2: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, C_TILE: tl.constexpr,
    F_TILE: tl.constexpr, SAVE_SXY: tl.constexpr, PRECISION: tl.constexpr, FLAT: tl.constexpr,
):  # fmt: skip
    """:func:`_forward_kernel` with the convolution inside (``_FUSED_CONV``): one program, BLOCK
    output positions of one (batch, group) and the filters ``[s k_chunk, (s + 1) k_chunk)`` of the
    group (at most F_TILE), for its split ``s``.

    One pass over the group's input channels (C_TILE at a time) and the kernel's taps reads each
    tile of patch values once and uses it three times: for Sx and Sxx, and, multiplied by the
    matching tile of filter values, for Sxy (``tl.dot``). The filter tiles give the filters' sums
    and sums of squares on the way, so the filter statistics need no second pass. Sxy is written
    only if SAVE_SXY (for the backward); the programs of split 0 write the patch sums, the first
    program of each group and split the filter statistics.
    """
    split, b, g, block, offs, inside = _split_program(
        splits, n_blocks, groups, h_out * w_out, BLOCK
    )
    oh, ow = offs // w_out, offs % w_out
    f, k_ok = _split_filters(split, k_chunk, k_per_group, g, F_TILE)
    w_rows = w_ptr + f.to(tl.int64)[:, None] * n  # filter f's values: (channel, tap) row-major

    x_group = x_ptr + b * sx_b + (g * c_in_g) * sx_c
    s_x, s_xx, s_y, s_yy, s_xy = _patch_dot(
        x_group, w_rows, k_ok, oh, ow, inside, c_in_g, h, w, sx_c, sx_h, sx_w,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        KH, KW, BLOCK, C_TILE, F_TILE, PRECISION, True, FLAT,
    )  # fmt: skip
    _store_box(box_ptr, b, g, groups, h_out * w_out, offs, inside & (split == 0), s_x, s_xx)

    mu_x, var_x = _patch_stats(s_x, s_xx, n)
    mu_f = s_y / n
    var_f = tl.maximum((s_yy - mu_f * mu_f * n) / (n - 1), 0.0)
    first = (b == 0) & (block == 0)
    c_out = groups * k_per_group
    tl.store(ystat_ptr + f, mu_f, mask=k_ok & first)
    tl.store(ystat_ptr + c_out + f, var_f, mask=k_ok & first)
    at = (b * ss_b + oh * ss_h + ow * ss_w)[None, :] + f[:, None] * ss_c
    ok = k_ok[:, None] & inside[None, :]
    if SAVE_SXY:
        tl.store(sxy_ptr + at, s_xy, mask=ok)
    a1, b1, a2, b2 = _eq8_terms(mu_x, var_x, mu_f[:, None], var_f[:, None], s_xy, n, c1, c2)
    tl.store(out_ptr + at, (a1 * a2) / (b1 * b2), mask=ok)


@triton.jit
def _coefficients(grad, s_xy, mu_x, var_x, mu_y, var_y, ok, n, c1, c2):
    """The backward's terms for a ``(filters, positions)`` tile (``ok`` masks it): R (g dS/dcov /
    (N - 1), the tile), the input's box terms P and Q summed over the filters (``(positions,)``)
    and the filters' terms P' and Q' summed over the positions (``(filters,)``); see
    :class:`ssimlayer.functional._SSIMConv2dEq8` for the maths."""
    a1, b1, a2, b2 = _eq8_terms(mu_x, var_x, mu_y, var_y, s_xy, n, c1, c2)
    inv = grad / (b1 * b2)
    d_a1 = inv * a2  # g dS/dA1
    g_s = d_a1 * a1  # g S
    d_b1 = g_s / b1  # -g dS/dB1
    d_var = -g_s / b2  # g dS/dvar_x = g dS/dvar_y
    r = inv * a1 * 2 / (n - 1)  # g dS/dcov / (N - 1)
    d_mu_x = (d_a1 * mu_y - d_b1 * mu_x) * 2
    d_mu_y = (d_a1 * mu_x - d_b1 * mu_y) * 2
    d_var2 = tl.where(ok, d_var * 2 / (n - 1), 0.0)  # g dS/dvar * dvar/dx_i / (x_i - mu)
    p_x = tl.sum(tl.where(ok, d_mu_x / n - d_var2 * mu_x - r * mu_y, 0.0), 0)
    p_y = tl.sum(tl.where(ok, d_mu_y / n - d_var2 * mu_y - r * mu_x, 0.0), 1)
    return r, p_x, tl.sum(d_var2, 0), p_y, tl.sum(d_var2, 1)


@triton.jit
def _backward_kernel(
    grad_ptr, sxy_ptr, r_ptr, ystat_ptr, box_ptr, pq_ptr, part_ptr,
    h_out, w_out, k_per_group, groups, n_blocks, splits, k_chunk, pq_split,
    sg_b, sg_c, sg_h, sg_w,
    ss_b, ss_c, ss_h, ss_w,
    n, c1: tl.constexpr, c2: tl.constexpr,
    BLOCK: tl.constexpr, K_TILE: tl.constexpr,
):  # fmt: skip
    """Gradient coefficients (see :class:`ssimlayer.functional._SSIMConv2dEq8`) for one program.

    The program's filters are ``[s k_chunk, (s + 1) k_chunk)`` of the group, for its split ``s``
    of ``splits`` (see ``_BACKWARD_SPLIT``). Writes R (output-sized, Sxy's strides), the input's
    box terms P and Q summed over the program's filters (``pq``: one array laid out like ``box``
    per split, ``pq_split`` values apart) and this program's partial sums of the filter terms P'
    and Q' (row ``b * n_blocks + block`` of ``part``, ``(rows, 2 C_out)``).
    """
    split, b, g, block, offs, inside = _split_program(
        splits, n_blocks, groups, h_out * w_out, BLOCK
    )
    dt = grad_ptr.dtype.element_ty
    oh, ow = offs // w_out, offs % w_out

    s_x, s_xx = _load_box(box_ptr, b, g, groups, h_out * w_out, offs, inside)
    mu_x, var_x = _patch_stats(s_x, s_xx, n)
    c_out = groups * k_per_group
    pos_s = (b * ss_b + oh * ss_h + ow * ss_w)[None, :]
    pos_g = (b * sg_b + oh * sg_h + ow * sg_w)[None, :]
    part = part_ptr + (b * n_blocks + block) * (2 * c_out)
    p_x = tl.zeros([BLOCK], dtype=dt)
    q_x = tl.zeros([BLOCK], dtype=dt)
    k_lo = split * k_chunk
    for k0 in range(k_lo, tl.minimum(k_lo + k_chunk, k_per_group), K_TILE):
        ks = k0 + tl.arange(0, K_TILE)
        k_ok = ks < k_per_group
        f = g * k_per_group + ks
        mu_y, var_y = _filter_tile(ystat_ptr, f, k_ok, c_out)
        ok = k_ok[:, None] & inside[None, :]
        grad = tl.load(grad_ptr + pos_g + f[:, None] * sg_c, mask=ok, other=0.0).to(dt)
        s_xy = tl.load(sxy_ptr + pos_s + f[:, None] * ss_c, mask=ok, other=0.0)
        r, p_xk, q_xk, p_y, q_y = _coefficients(grad, s_xy, mu_x, var_x, mu_y, var_y, ok, n, c1, c2)
        tl.store(r_ptr + pos_s + f[:, None] * ss_c, r, mask=ok)
        p_x += p_xk
        q_x += q_xk
        tl.store(part + f, p_y, mask=k_ok)
        tl.store(part + c_out + f, q_y, mask=k_ok)
    pq = pq_ptr + split.to(tl.int64) * pq_split  # this split's P and Q
    _store_box(pq, b, g, groups, h_out * w_out, offs, inside, p_x, q_x)


@triton.jit
def _fused_backward_kernel(
    grad_ptr, x_ptr, w_ptr, r_ptr, ystat_ptr, box_ptr, pq_ptr, part_ptr,
    c_in_g, h, w, h_out, w_out, k_per_group, groups, n_blocks, splits, k_chunk, pq_split,
    sg_b, sg_c, sg_h, sg_w,
    sr_b, sr_c, sr_h, sr_w,
    sx_b, sx_c, sx_h, sx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    n, c1: tl.constexpr, c2: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, C_TILE: tl.constexpr,
    F_TILE: tl.constexpr, PRECISION: tl.constexpr, FLAT: tl.constexpr,
):  # fmt: skip
    """:func:`_backward_kernel` for a forward that did not keep Sxy, with ``_FUSED_CONV``: the
    program computes its filters' Sxy itself (:func:`_patch_dot`) instead of reading a Sxy that a
    convolution recomputed, and handles its (at most F_TILE) filters as one tile. Writes R (its own
    strides), P and Q per split and the partial filter terms as :func:`_backward_kernel` does."""
    split, b, g, block, offs, inside = _split_program(
        splits, n_blocks, groups, h_out * w_out, BLOCK
    )
    oh, ow = offs // w_out, offs % w_out
    f, k_ok = _split_filters(split, k_chunk, k_per_group, g, F_TILE)
    _, _, _, _, s_xy = _patch_dot(
        x_ptr + b * sx_b + (g * c_in_g) * sx_c, w_ptr + f.to(tl.int64)[:, None] * n, k_ok,
        oh, ow, inside, c_in_g, h, w, sx_c, sx_h, sx_w,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        KH, KW, BLOCK, C_TILE, F_TILE, PRECISION, False, FLAT,
    )  # fmt: skip

    s_x, s_xx = _load_box(box_ptr, b, g, groups, h_out * w_out, offs, inside)
    mu_x, var_x = _patch_stats(s_x, s_xx, n)
    c_out = groups * k_per_group
    mu_y, var_y = _filter_tile(ystat_ptr, f, k_ok, c_out)
    ok = k_ok[:, None] & inside[None, :]
    at_g = (b * sg_b + oh * sg_h + ow * sg_w)[None, :] + f[:, None] * sg_c
    grad = tl.load(grad_ptr + at_g, mask=ok, other=0.0).to(s_xy.dtype)
    r, p_x, q_x, p_y, q_y = _coefficients(grad, s_xy, mu_x, var_x, mu_y, var_y, ok, n, c1, c2)
    tl.store(r_ptr + (b * sr_b + oh * sr_h + ow * sr_w)[None, :] + f[:, None] * sr_c, r, mask=ok)
    part = part_ptr + (b * n_blocks + block) * (2 * c_out)
    tl.store(part + f, p_y, mask=k_ok)
    tl.store(part + c_out + f, q_y, mask=k_ok)
    pq = pq_ptr + split.to(tl.int64) * pq_split  # this split's P and Q
    _store_box(pq, b, g, groups, h_out * w_out, offs, inside, p_x, q_x)


@triton.jit
def _covering_window(
    ih, iw, i, j, inside, h_out, w_out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
):  # fmt: skip
    """The output position ``(oh, ow)`` whose window has pixel ``(ih, iw)`` at tap ``(i, j)``,
    and whether that window exists (``inside`` and the stride and the output's edges allow it)."""
    th = ih + pad_h - i * dil_h  # = oh * stride_h for that window
    tw = iw + pad_w - j * dil_w
    oh = th // stride_h
    ow = tw // stride_w
    ok = inside & (th >= 0) & (oh * stride_h == th) & (oh < h_out)
    return oh, ow, ok & (tw >= 0) & (ow * stride_w == tw) & (ow < w_out)


@triton.jit
def _window_pq(
    pq_ptr, pq_splits, pq_split, b, g, groups, ih, iw, inside, h_out, w_out,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    """P and Q of the pixels ``(ih, iw)`` of group ``g``, each summed over every window that
    covers the pixel and over the ``pq_splits`` partial arrays of ``pq`` (``pq_split`` apart);
    the kernel's taps unrolled (all their loads in flight at once) if UNROLL, else in a loop."""
    dt = pq_ptr.dtype.element_ty
    p = tl.zeros([BLOCK], dtype=dt)
    q = tl.zeros([BLOCK], dtype=dt)
    pq = pq_ptr + b * (2 * groups * h_out * w_out)
    for _ in range(0, pq_splits):
        if UNROLL:
            for i in tl.static_range(KH):
                for j in tl.static_range(KW):
                    oh, ow, ok = _covering_window(
                        ih, iw, i, j, inside, h_out, w_out,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                    )  # fmt: skip
                    o = oh * w_out + ow
                    p += tl.load(pq + g * (h_out * w_out) + o, mask=ok, other=0.0)
                    q += tl.load(pq + (groups + g) * (h_out * w_out) + o, mask=ok, other=0.0)
        else:
            for tap in range(0, KH * KW):
                oh, ow, ok = _covering_window(
                    ih, iw, tap // KW, tap % KW, inside, h_out, w_out,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                )  # fmt: skip
                o = oh * w_out + ow
                p += tl.load(pq + g * (h_out * w_out) + o, mask=ok, other=0.0)
                q += tl.load(pq + (groups + g) * (h_out * w_out) + o, mask=ok, other=0.0)
        pq += pq_split  # the next split's P and Q
    return p[None, :], q[None, :]


@triton.jit
def _input_window_terms(
    pid, gx_ptr, x_ptr, pq_ptr, pq_splits, pq_split, c_splits, c_chunk,
    c_in_g, h, w, h_out, w_out, groups, n_blocks,
    sx_b, sx_c, sx_h, sx_w,
    sgx_b, sgx_c, sgx_h, sgx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, C_TILE: tl.constexpr,
):  # fmt: skip
    """grad_x += P + Q x for program ``pid``'s pixels (:func:`_window_pq`); the program's channels
    are ``[s c_chunk, (s + 1) c_chunk)`` of the group, for its split ``s`` of ``c_splits``."""
    c_lo = (pid % c_splits).to(tl.int32) * c_chunk
    b, g, _, offs, inside = _program_tile(pid // c_splits, n_blocks, groups, h * w, BLOCK)
    ih, iw = offs // w, offs % w
    p, q = _window_pq(
        pq_ptr, pq_splits, pq_split, b, g, groups, ih, iw, inside, h_out, w_out,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW, BLOCK, True,
    )  # fmt: skip
    x_pix = (b * sx_b + ih * sx_h + iw * sx_w)[None, :]
    gx_pix = (b * sgx_b + ih * sgx_h + iw * sgx_w)[None, :]
    for c0 in range(c_lo, tl.minimum(c_lo + c_chunk, c_in_g), C_TILE):
        chans = c0 + tl.arange(0, C_TILE)
        chan = (g * c_in_g + chans).to(tl.int64)[:, None]
        tile_ok = (chans < c_in_g)[:, None] & inside[None, :]
        xv = tl.load(x_ptr + x_pix + chan * sx_c, mask=tile_ok)
        gx = gx_ptr + gx_pix + chan * sgx_c
        tl.store(gx, tl.load(gx, mask=tile_ok) + p + q * xv, mask=tile_ok)


@triton.jit
def _input_conv_terms(
    pid, gx_ptr, x_ptr, pq_ptr, r_ptr, w_ptr, pq_splits, pq_split, c_splits, c_chunk,
    c_in_g, h, w, h_out, w_out, k_per_group, groups, n_blocks,
    sx_b, sx_c, sx_h, sx_w,
    sgx_b, sgx_c, sgx_h, sgx_w,
    sr_b, sr_c, sr_h, sr_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, C_TILE: tl.constexpr,
    K_STEP: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """grad_x = (the convolution's input gradient of R) + P + Q x for program ``pid``'s pixels
    and channels (as :func:`_input_window_terms`), written rather than added to: for each channel,
    the sum over every window that covers the pixel and over the group's filters of R times the
    filter value at the pixel's place in that window, C_TILE channels by K_STEP filters per
    ``tl.dot`` (``_CONV_BACKWARD``)."""
    c_lo = (pid % c_splits).to(tl.int32) * c_chunk
    b, g, _, offs, inside = _program_tile(pid // c_splits, n_blocks, groups, h * w, BLOCK)
    dt = x_ptr.dtype.element_ty
    ih, iw = offs // w, offs % w
    p, q = _window_pq(
        pq_ptr, pq_splits, pq_split, b, g, groups, ih, iw, inside, h_out, w_out,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW, BLOCK, False,
    )  # fmt: skip
    n = c_in_g * (KH * KW)
    r_image = r_ptr + b * sr_b
    x_pix = (b * sx_b + ih * sx_h + iw * sx_w)[None, :]
    gx_pix = (b * sgx_b + ih * sgx_h + iw * sgx_w)[None, :]
    for c0 in range(c_lo, tl.minimum(c_lo + c_chunk, c_in_g), C_TILE):
        chans = c0 + tl.arange(0, C_TILE)
        chan_ok = chans < c_in_g
        acc = tl.zeros([C_TILE, BLOCK], dtype=dt)
        # A loop, not unrolled: unrolled, the 3x3 kernel took 45 s to compile for sm_90 and the
        # 7x7 one minutes (tests/triton_compile_check.py).
        for tap in range(0, KH * KW):
            oh, ow, ok = _covering_window(
                ih, iw, tap // KW, tap % KW, inside, h_out, w_out,
                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
            )  # fmt: skip
            ok = ok[None, :]
            r_window = r_image + (oh * sr_h + ow * sr_w)[None, :]
            w_tap = w_ptr + (chans * (KH * KW) + tap)[:, None]
            for f0 in range(0, k_per_group, K_STEP):
                ks = f0 + tl.arange(0, K_STEP)
                k_ok = ks < k_per_group
                f = (g * k_per_group + ks).to(tl.int64)
                r = tl.load(r_window + f[:, None] * sr_c, mask=k_ok[:, None] & ok, other=0.0)
                y = tl.load(
                    w_tap + f[None, :] * n, mask=chan_ok[:, None] & k_ok[None, :], other=0.0
                )
                acc = tl.dot(y, r, acc, input_precision=PRECISION, out_dtype=dt)
        chan = (g * c_in_g + chans).to(tl.int64)[:, None]
        tile_ok = chan_ok[:, None] & inside[None, :]
        xv = tl.load(x_ptr + x_pix + chan * sx_c, mask=tile_ok)
        tl.store(gx_ptr + gx_pix + chan * sgx_c, acc + p + q * xv, mask=tile_ok)


@triton.jit
def _filter_conv_terms(
    t, gw_ptr, x_ptr, r_ptr,
    c_in_g, h, w, h_out, w_out, k_per_group, f_tiles, n_tiles, splits, rows_per_split, rows,
    out_blocks,
    sx_b, sx_c, sx_h, sx_w,
    sr_b, sr_c, sr_h, sr_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, OUT_BLOCK: tl.constexpr, F_TILE: tl.constexpr,
    N_TILE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """grad_w += the convolution's filter gradient of R, one program's share (``_CONV_BACKWARD``):
    F_TILE filters of one group by N_TILE of their values (``(channel, tap)`` row-major), summed
    over its split ``s`` of the ``rows`` = batch x blocks of OUT_BLOCK output positions, rows
    ``[s rows_per_split, (s + 1) rows_per_split)``, by ``tl.dot`` of R with the matching patch
    values, then added to ``grad_w`` with atomic adds (the splits' order of addition varies)."""
    split = t % splits
    tile = t // splits
    n_tile = tile % n_tiles
    tile = tile // n_tiles
    g = tile // f_tiles
    ks = (tile % f_tiles) * F_TILE + tl.arange(0, F_TILE)
    k_ok = ks < k_per_group
    f = (g * k_per_group + ks).to(tl.int64)
    n = c_in_g * (KH * KW)
    kk = n_tile * N_TILE + tl.arange(0, N_TILE)  # the values' places in a filter's row
    kk_ok = kk < n
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros([F_TILE, N_TILE], dtype=dt)
    row_lo = split * rows_per_split
    for row in range(row_lo, tl.minimum(row_lo + rows_per_split, rows)):
        b = (row // out_blocks).to(tl.int64)
        offs = (row % out_blocks) * OUT_BLOCK + tl.arange(0, OUT_BLOCK)
        inside = offs < h_out * w_out
        oh, ow = offs // w_out, offs % w_out
        r = tl.load(
            r_ptr + b * sr_b + f[:, None] * sr_c + (oh * sr_h + ow * sr_w)[None, :],
            mask=k_ok[:, None] & inside[None, :],
            other=0.0,
        )
        v = _flat_patch_values(
            x_ptr + b * sx_b + (g * c_in_g) * sx_c, kk, kk_ok, oh, ow, inside, h, w,
            sx_c, sx_h, sx_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW,
        )  # fmt: skip
        acc = tl.dot(r, tl.trans(v), acc, input_precision=PRECISION, out_dtype=dt)
    at = gw_ptr + f[:, None] * n + kk[None, :]
    tl.atomic_add(at, acc, mask=k_ok[:, None] & kk_ok[None, :], sem="relaxed")


@triton.jit
def _filter_terms(
    f, gw_ptr, w_ptr, part_ptr, rows, n, c_out, BLOCK: tl.constexpr, ATOMIC: tl.constexpr
):
    """grad_w[f] += P'_f + Q'_f w[f], with P', Q' summed over the partial rows (fixed order); by
    atomic adds if ATOMIC (other programs of the launch add to the same values)."""
    dt = w_ptr.dtype.element_ty
    p = tl.zeros([BLOCK], dtype=dt)
    q = tl.zeros([BLOCK], dtype=dt)
    for start in range(0, rows, BLOCK):
        r = start + tl.arange(0, BLOCK)
        ok = r < rows
        p += tl.load(part_ptr + r.to(tl.int64) * (2 * c_out) + f, mask=ok, other=0.0)
        q += tl.load(part_ptr + r.to(tl.int64) * (2 * c_out) + c_out + f, mask=ok, other=0.0)
    p_f = tl.sum(p, 0)
    q_f = tl.sum(q, 0)
    base = f.to(tl.int64) * n
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n
        wv = tl.load(w_ptr + base + offs, mask=ok)
        if ATOMIC:
            tl.atomic_add(gw_ptr + base + offs, wv * q_f + p_f, mask=ok, sem="relaxed")
        else:
            gw = tl.load(gw_ptr + base + offs, mask=ok)
            tl.store(gw_ptr + base + offs, gw + p_f + q_f * wv, mask=ok)


@triton.jit
def _window_terms_kernel(
    gx_ptr, x_ptr, pq_ptr, gw_ptr, w_ptr, part_ptr,
    c_in_g, h, w, h_out, w_out, groups, n_blocks, input_programs, pq_splits, pq_split,
    c_splits, c_chunk,
    sx_b, sx_c, sx_h, sx_w,
    sgx_b, sgx_c, sgx_h, sgx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    rows, n, c_out,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, C_TILE: tl.constexpr,
    W_BLOCK: tl.constexpr, INPUT: tl.constexpr, FILTER: tl.constexpr,
):  # fmt: skip
    """The backward's last step in one launch: programs ``[0, input_programs)`` add the window
    terms to ``grad_x`` (if INPUT), the next ``C_out`` programs the per-filter terms to ``grad_w``
    (if FILTER). Both read only what the backward kernel and the convolution wrote before."""
    pid = tl.program_id(0).to(tl.int64)
    if INPUT:
        if pid < input_programs:
            _input_window_terms(
                pid, gx_ptr, x_ptr, pq_ptr, pq_splits, pq_split, c_splits, c_chunk,
                c_in_g, h, w, h_out, w_out, groups, n_blocks,
                sx_b, sx_c, sx_h, sx_w,
                sgx_b, sgx_c, sgx_h, sgx_w,
                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                KH, KW, BLOCK, C_TILE,
            )  # fmt: skip
    if FILTER:
        if pid >= input_programs:
            _filter_terms(
                pid - input_programs, gw_ptr, w_ptr, part_ptr, rows, n, c_out, W_BLOCK, False
            )


@triton.jit
def _conv_window_terms_kernel(
    gx_ptr, x_ptr, pq_ptr, gw_ptr, w_ptr, part_ptr, r_ptr,
    c_in_g, h, w, h_out, w_out, k_per_group, groups, pq_splits, pq_split,
    conv_programs, input_programs, n_blocks, out_blocks, c_splits, c_chunk,
    f_tiles, n_tiles, conv_splits, rows_per_split, out_rows,
    sx_b, sx_c, sx_h, sx_w,
    sgx_b, sgx_c, sgx_h, sgx_w,
    sr_b, sr_c, sr_h, sr_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    rows, n, c_out,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr, OUT_BLOCK: tl.constexpr,
    C_TILE: tl.constexpr, F_TILE: tl.constexpr, N_TILE: tl.constexpr, K_STEP: tl.constexpr,
    W_BLOCK: tl.constexpr, INPUT: tl.constexpr, FILTER: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """The backward after the gradient coefficients in one launch, the convolution's backward of R
    included (``_CONV_BACKWARD``, instead of ``convolution_backward`` and
    :func:`_window_terms_kernel`): programs ``[0, conv_programs)`` add their shares of R's filter
    gradient to ``grad_w`` (if FILTER; first, as they take longest), the next ``input_programs``
    write ``grad_x`` (if INPUT), the last ``C_out`` add the per-filter terms to ``grad_w`` (if
    FILTER). ``grad_w`` must be zeros before."""
    pid = tl.program_id(0).to(tl.int64)
    if FILTER:
        if pid < conv_programs:
            _filter_conv_terms(
                pid, gw_ptr, x_ptr, r_ptr,
                c_in_g, h, w, h_out, w_out, k_per_group, f_tiles, n_tiles, conv_splits,
                rows_per_split, out_rows, out_blocks,
                sx_b, sx_c, sx_h, sx_w,
                sr_b, sr_c, sr_h, sr_w,
                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                KH, KW, OUT_BLOCK, F_TILE, N_TILE, PRECISION,
            )  # fmt: skip
        if pid >= conv_programs + input_programs:
            _filter_terms(
                pid - conv_programs - input_programs, gw_ptr, w_ptr, part_ptr, rows, n, c_out,
                W_BLOCK, True,
            )  # fmt: skip
    if INPUT:
        if (pid >= conv_programs) & (pid < conv_programs + input_programs):
            _input_conv_terms(
                pid - conv_programs, gx_ptr, x_ptr, pq_ptr, r_ptr, w_ptr, pq_splits, pq_split,
                c_splits, c_chunk, c_in_g, h, w, h_out, w_out, k_per_group, groups, n_blocks,
                sx_b, sx_c, sx_h, sx_w,
                sgx_b, sgx_c, sgx_h, sgx_w,
                sr_b, sr_c, sr_h, sr_w,
                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                KH, KW, BLOCK, C_TILE, K_STEP, PRECISION,
            )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Host side


# Host-side arithmetic in plain Python: triton.cdiv and triton.next_power_of_2 are jit-aware
# functions whose calls cost microseconds each, and every launch here needs several.
def _pow2(size: int) -> int:
    return 1 << max(size - 1, 0).bit_length()


def _block(size: int) -> int:
    return max(16, min(_BLOCK, _pow2(size)))


def _tile(size: int, most: int) -> int:
    return max(2, min(most, _pow2(size)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _register_cap() -> dict:
    """The ``maxnreg`` compile option where ``_MAX_REGISTERS`` sets one, else nothing."""
    return {"maxnreg": _MAX_REGISTERS} if _MAX_REGISTERS else {}


def _warps(block: int) -> int:
    return max(_MIN_WARPS, 4 if block >= 128 else (2 if block >= 64 else 1))


@functools.lru_cache(maxsize=256)
def split_tiles(count: int, tile: int, most: int, blocks: int, cap: int = 0) -> tuple[int, int]:
    """``(splits, chunk)``: a group's ``count`` filters (or channels), in tiles of ``tile``, shared
    among at most ``most`` programs per block of positions, ``chunk`` of them (whole tiles) each;
    ``most == 0`` shares them among enough programs that the ``blocks`` blocks of positions make
    about ``_SPLIT_PROGRAMS``, and among at most ``cap`` if it is not 0."""
    if most == 0:
        most = _cdiv(_SPLIT_PROGRAMS, max(blocks, 1))
        most = min(most, cap) if cap else most
    tiles = _cdiv(count, tile)
    if tiles <= 1 or most <= 1:
        return 1, max(tiles, 1) * tile
    chunk = _cdiv(tiles, min(most, tiles)) * tile
    return _cdiv(count, chunk), chunk


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def forward_meta(w_shape, groups: int, out_positions: int) -> dict:
    """The forward kernel's compile-time parameters and warps for filters ``w_shape``."""
    c_out, c_in_g, kh, kw = w_shape
    block = _block(out_positions)
    return dict(
        KH=kh, KW=kw, BLOCK=block, C_TILE=_tile(c_in_g, _C_TILE),
        K_TILE=_tile(c_out // groups, _K_TILE), N_BLOCK=_tile(c_in_g * kh * kw, _N_BLOCK),
        STATS_ONCE=_STATS_ONCE, TAPS_OUTSIDE=_TAPS_OUTSIDE, num_warps=_warps(block),
        **_register_cap(),
    )  # fmt: skip


def _fused_meta(w_shape, groups, positions, blocks, tf32, most, cap, filters) -> tuple:
    """A fused kernel's ``(meta, splits, k_chunk)``: its compile-time parameters and warps, and
    its split, ``splits`` programs per block of positions (at most ``most``, 0 for automatic,
    automatic at most ``cap``), ``k_chunk`` filters each, at most ``filters`` (``blocks`` blocks in
    the launch; ``tf32``: whether its ``tl.dot`` may round float32 inputs to TF32)."""
    c_out, c_in_g, kh, kw = w_shape
    k_per_group = c_out // groups
    splits, k_chunk = split_tiles(k_per_group, 16, most, blocks, cap)
    if k_chunk > filters:  # one program holds all its filters' Sxy at once
        k_chunk = filters
        splits = _cdiv(k_per_group, k_chunk)
    meta = dict(
        KH=kh, KW=kw, BLOCK=_block(positions), C_TILE=_FUSED_C_TILE, F_TILE=max(16, _pow2(k_chunk)),
        PRECISION="tf32" if tf32 else "ieee", FLAT=c_in_g < _FUSED_FLAT_CHANNELS,
        num_warps=_FUSED_WARPS, num_stages=_FUSED_STAGES, **_register_cap(),
    )  # fmt: skip
    return meta, splits, k_chunk


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def fused_forward_meta(w_shape, groups: int, out_positions: int, blocks: int, tf32: bool) -> tuple:
    """The fused forward kernel's :func:`_fused_meta`: split as the forward (``_FORWARD_SPLIT``),
    at most _FUSED_FILTERS filters per program."""
    return _fused_meta(
        w_shape, groups, out_positions, blocks, tf32,
        _FORWARD_SPLIT, _FORWARD_AUTO_SPLIT, _FUSED_FILTERS,
    )  # fmt: skip


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def fused_backward_meta(w_shape, groups: int, out_positions: int, blocks: int, tf32: bool) -> tuple:
    """The fused gradient-coefficient kernel's :func:`_fused_meta`: split as the backward
    (``_BACKWARD_SPLIT``), at most _FUSED_BACKWARD_FILTERS filters per program."""
    return _fused_meta(
        w_shape, groups, out_positions, blocks, tf32, _BACKWARD_SPLIT, 0, _FUSED_BACKWARD_FILTERS
    )


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def filter_stats_meta(w_shape) -> dict:
    """The filter-statistics kernel's compile-time parameters and warps."""
    c_out, c_in_g, kh, kw = w_shape
    return dict(
        K_TILE=_tile(c_out, _K_TILE), N_BLOCK=_tile(c_in_g * kh * kw, _N_BLOCK), num_warps=4
    )


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def backward_meta(w_shape, groups: int, out_positions: int) -> dict:
    """The gradient-coefficient kernel's compile-time parameters and warps."""
    block = _block(out_positions)
    return dict(
        BLOCK=block, K_TILE=_tile(w_shape[0] // groups, _K_TILE), num_warps=_warps(block),
        **_register_cap(),
    )  # fmt: skip


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def window_terms_meta(w_shape, groups: int, in_positions: int, part_rows: int, needs) -> dict:
    """The window-terms kernel's compile-time parameters and warps; ``part_rows`` is the number of
    partial rows the gradient-coefficient kernel wrote, ``needs`` a pair of bools."""
    c_out, c_in_g, kh, kw = w_shape
    block = _block(in_positions)
    w_block = _block(max(c_in_g * kh * kw, part_rows))
    return dict(
        KH=kh, KW=kw, BLOCK=block, C_TILE=_tile(c_in_g, _C_TILE), W_BLOCK=w_block,
        INPUT=needs[0], FILTER=needs[1],
        num_warps=max(_warps(block), _warps(w_block)), **_register_cap(),
    )  # fmt: skip


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def conv_window_terms_meta(
    w_shape, groups: int, in_positions: int, out_positions: int, batch: int, needs, tf32: bool
) -> tuple:
    """:func:`_conv_window_terms_kernel`'s ``(meta, programs)``: its compile-time parameters and
    warps, and the programs' shares of the work as a dict of the kernel's arguments from
    ``conv_programs`` to ``out_rows``, in the kernel's order (the launch passes its values as
    they are; ``conv_programs`` and ``input_programs`` are 0 where ``needs`` says not needed)."""
    c_out, c_in_g, kh, kw = w_shape
    k_per_group = c_out // groups
    n = c_in_g * kh * kw
    block = _block(in_positions)
    out_block = max(16, min(_CONV_STEP, _pow2(out_positions)))
    in_blocks, out_blocks = _cdiv(in_positions, block), _cdiv(out_positions, out_block)
    c_splits, c_chunk = split_tiles(c_in_g, 16, _WINDOW_SPLIT, batch * groups * in_blocks)
    f_tile = max(16, min(_CONV_FILTERS, _pow2(k_per_group)))
    n_tile = max(16, min(_CONV_TILE, _pow2(n)))
    f_tiles, n_tiles = _cdiv(k_per_group, f_tile), _cdiv(n, n_tile)
    out_rows = batch * out_blocks  # the filter gradient sums over these rows of positions
    part_rows = batch * _cdiv(out_positions, _block(out_positions))  # the coefficients' partials
    tiles = groups * f_tiles * n_tiles
    splits = min(out_rows, _cdiv(_CONV_PROGRAMS, max(tiles, 1)))
    rows_per_split = _cdiv(out_rows, max(splits, 1))
    splits = _cdiv(out_rows, rows_per_split) if out_rows else 0
    programs = dict(
        conv_programs=tiles * splits if needs[1] else 0,
        input_programs=batch * groups * in_blocks * c_splits if needs[0] else 0,
        n_blocks=in_blocks, out_blocks=out_blocks, c_splits=c_splits, c_chunk=c_chunk,
        f_tiles=f_tiles, n_tiles=n_tiles, conv_splits=splits, rows_per_split=rows_per_split,
        out_rows=out_rows,
    )  # fmt: skip
    meta = dict(
        KH=kh, KW=kw, BLOCK=block, OUT_BLOCK=out_block,
        C_TILE=max(16, min(_CONV_TILE, _pow2(c_chunk))), F_TILE=f_tile, N_TILE=n_tile,
        K_STEP=max(16, min(_CONV_FILTER_STEP, _pow2(k_per_group))),
        W_BLOCK=_block(max(n, part_rows)), INPUT=needs[0], FILTER=needs[1],
        PRECISION="tf32" if tf32 else "ieee", num_warps=_CONV_WARPS, num_stages=_CONV_STAGES,
        **_register_cap(),
    )  # fmt: skip
    return meta, programs


_forward_launch = Launcher(_forward_kernel, pointers=6)
_fused_forward_launch = Launcher(_fused_forward_kernel, pointers=6)
_fused_backward_launch = Launcher(_fused_backward_kernel, pointers=8)
_filter_stats_launch = Launcher(_filter_stats_kernel, pointers=2)
_backward_launch = Launcher(_backward_kernel, pointers=7)
_window_terms_launch = Launcher(_window_terms_kernel, pointers=6)
_conv_window_terms_launch = Launcher(_conv_window_terms_kernel, pointers=7)
LAUNCHERS = (
    _forward_launch,
    _fused_forward_launch,
    _fused_backward_launch,
    _filter_stats_launch,
    _backward_launch,
    _window_terms_launch,
    _conv_window_terms_launch,
)


def _clear_meta() -> None:
    for meta in (
        forward_meta,
        fused_forward_meta,
        fused_backward_meta,
        filter_stats_meta,
        backward_meta,
        window_terms_meta,
        conv_window_terms_meta,
    ):
        meta.cache_clear()


def set_filter_tile(filters: int) -> int:
    """Make the filter-tiled kernels handle ``filters`` filters at once from the next launch on (a
    knob for benchmarks, see experiments/bench/k_tile.py); returns the previous value."""
    global _K_TILE
    previous, _K_TILE = _K_TILE, filters
    _clear_meta()
    return previous


def set_position_block(positions: int) -> int:
    """Make each program handle at most ``positions`` (a power of two, >= 16; default 64) output or
    input positions from the next launch on: fewer positions, more programs (a knob for benchmarks,
    see experiments/bench/k_tile.py); returns the previous value."""
    global _BLOCK
    if positions < 16 or positions & (positions - 1):
        raise ValueError(f"set_position_block: a power of two >= 16, got {positions}")
    previous, _BLOCK = _BLOCK, positions
    _clear_meta()
    return previous


def set_split(
    forward: int | None = None, backward: int | None = None, window: int | None = None
) -> tuple[int, int, int]:
    """Share each block of positions' filters among at most ``forward`` (``backward``) programs of
    the forward (gradient-coefficient) kernel, and each block of pixels' input channels among at
    most ``window`` programs of the window-terms kernel, from the next launch on; 0 for the
    automatic choice (the default, see ``_FORWARD_SPLIT``), None to leave one as it is (a knob for
    benchmarks, see experiments/bench/k_tile.py). Returns the previous three."""
    global _FORWARD_SPLIT, _BACKWARD_SPLIT, _WINDOW_SPLIT
    for name, value in (("forward", forward), ("backward", backward), ("window", window)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"set_split: {name} must be an int >= 0, got {value!r}")
    previous = (_FORWARD_SPLIT, _BACKWARD_SPLIT, _WINDOW_SPLIT)
    _FORWARD_SPLIT = previous[0] if forward is None else forward
    _BACKWARD_SPLIT = previous[1] if backward is None else backward
    _WINDOW_SPLIT = previous[2] if window is None else window
    _clear_meta()  # the fused kernels' meta holds their split
    return previous


def set_min_warps(warps: int) -> int:
    """Give every program of the position-blocked kernels at least ``warps`` warps (1, 2, 4 or 8;
    default 1: 4 for blocks of 128, 2 for 64, 1 below) from the next launch on (a knob for
    benchmarks, see experiments/bench/k_tile.py); returns the previous value."""
    global _MIN_WARPS
    if warps not in (1, 2, 4, 8):
        raise ValueError(f"set_min_warps: 1, 2, 4 or 8, got {warps!r}")
    previous, _MIN_WARPS = _MIN_WARPS, warps
    _clear_meta()
    return previous


def set_stats_once(enabled: bool) -> bool:
    """Compute the filter statistics once per forward in their own launch (True) or in every
    forward program (False, the default); a knob for benchmarks. Returns the previous value."""
    global _STATS_ONCE
    previous, _STATS_ONCE = _STATS_ONCE, bool(enabled)
    _clear_meta()
    return previous


def set_max_registers(registers: int) -> int:
    """Cap the registers per thread of every position-blocked kernel at ``registers`` (24 to 255;
    0, the default, for no cap) from the next launch on (a knob for benchmarks, see
    ``_MAX_REGISTERS`` and experiments/bench/k_tile.py); returns the previous value."""
    global _MAX_REGISTERS
    if registers != 0 and not 24 <= registers <= 255:
        raise ValueError(f"set_max_registers: 0 or 24 to 255, got {registers!r}")
    previous, _MAX_REGISTERS = _MAX_REGISTERS, int(registers)
    _clear_meta()
    return previous


def set_taps_outside(enabled: bool) -> bool:
    """Sum the forward kernel's patches tap by tap, each over the channels (True), or channel
    tile by channel tile, each over every tap (False, the default) from the next launch on (see
    ``_TAPS_OUTSIDE``; a knob for benchmarks); returns the previous value."""
    global _TAPS_OUTSIDE
    previous, _TAPS_OUTSIDE = _TAPS_OUTSIDE, bool(enabled)
    _clear_meta()
    return previous


def set_fused_conv(enabled: bool) -> bool:
    """Compute the forward's Sxy inside the forward kernel (True) or by cuDNN before it (False, the
    default) from the next launch on (see ``_FUSED_CONV``; a knob for benchmarks, see
    experiments/bench/k_tile.py). Returns the previous value. A change makes the layer check the
    kernels of every configuration again on first use (see ``ssimlayer._fusion.TritonChecks``)."""
    global _FUSED_CONV
    previous, _FUSED_CONV = _FUSED_CONV, bool(enabled)
    if previous != _FUSED_CONV:
        _fusion.triton_checks.reset()
    return previous


def set_conv_backward(enabled: bool) -> bool:
    """Compute the convolution's backward of R inside the backward's last kernel (True) or by
    ``convolution_backward`` (False, the default) from the next launch on (see ``_CONV_BACKWARD``;
    a knob for benchmarks, see experiments/bench/k_tile.py). Returns the previous value. A change
    makes the layer check the kernels of every configuration again on first use."""
    global _CONV_BACKWARD
    previous, _CONV_BACKWARD = _CONV_BACKWARD, bool(enabled)
    if previous != _CONV_BACKWARD:
        _fusion.triton_checks.reset()
    return previous


_WARPS = (1, 2, 4, 8, 16)  # what the schedule setters accept
_STAGES = (1, 2, 3, 4)
_TILES = (16, 32, 64, 128)


def _check_choices(setter: str, **choices: tuple) -> None:
    """Raise a ValueError naming ``setter`` for the first ``name=(value, allowed)`` whose value is
    neither None nor one of ``allowed``."""
    for name, (value, allowed) in choices.items():
        if value is not None and value not in allowed:
            raise ValueError(f"{setter}: {name} must be one of {allowed}, got {value!r}")


def set_conv_schedule(
    tile: int | None = None,
    warps: int | None = None,
    stages: int | None = None,
    step: int | None = None,
) -> tuple[int, int, int, int]:
    """The schedule of the convolution's backward in the kernels (``_CONV_BACKWARD``) from the
    next launch on: at most ``tile`` filters, channels or filter values per side of a tl.dot's
    result and ``step`` along its inner dimension (16, 32, 64 or 128), ``warps`` per program (1
    to 16) and ``stages`` of software pipelining (1 to 4); None leaves one as it is (a knob for
    benchmarks, see ``_CONV_TILE``). Returns the previous ``(tile, warps, stages, step)``."""
    global _CONV_TILE, _CONV_WARPS, _CONV_STAGES, _CONV_STEP
    _check_choices(
        "set_conv_schedule",
        tile=(tile, _TILES),
        warps=(warps, _WARPS),
        stages=(stages, _STAGES),
        step=(step, _TILES),
    )
    previous = (_CONV_TILE, _CONV_WARPS, _CONV_STAGES, _CONV_STEP)
    new = [
        old if value is None else value for old, value in zip(previous, (tile, warps, stages, step))
    ]
    _CONV_TILE, _CONV_WARPS, _CONV_STAGES, _CONV_STEP = new
    _clear_meta()
    return previous


def set_fused_schedule(warps: int | None = None, stages: int | None = None) -> tuple[int, int]:
    """Warps per program (1, 2, 4, 8 or 16) and pipelining stages (1 to 4) of the fused forward
    kernel from the next launch on, None to leave one as it is (a knob for benchmarks, see
    ``_FUSED_WARPS``); returns the previous pair."""
    global _FUSED_WARPS, _FUSED_STAGES
    _check_choices("set_fused_schedule", warps=(warps, _WARPS), stages=(stages, _STAGES))
    previous = (_FUSED_WARPS, _FUSED_STAGES)
    _FUSED_WARPS = previous[0] if warps is None else warps
    _FUSED_STAGES = previous[1] if stages is None else stages
    _clear_meta()
    return previous


def _conv_tf32() -> bool:
    """Whether cuDNN would now run a float32 convolution in TF32 (PyTorch's default is yes)."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):  # torch < 2.9
        return bool(cudnn.allow_tf32)
    for level in (conv, cudnn, torch.backends):  # "none" defers to the level above
        precision = getattr(level, "fp32_precision", "none")
        if precision != "none":
            return precision == "tf32"
    return False


def _on_device_of(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``t``'s (a no-op in the common case)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def eq8_forward(x, w, c1: float, c2: float, geometry, save_sxy: bool):
    """Eq. 8 ``(B, C_out, Ho, Wo)``, the patch sums ``box``, the filter stats and (if asked) Sxy.

    ``x`` and ``w`` share one dtype (float32 or float64) and one CUDA device (or the CPU under
    ``TRITON_INTERPRET=1``); ``w`` must be contiguous.
    """
    with _on_device_of(x):
        return _eq8_forward(x, w, c1, c2, geometry, save_sxy)


def eq8_backward(x, w, box, ystat, s_xy, grad_out, c1: float, c2: float, geometry, needs):
    """Gradients of Eq. 8 for the input and the filters (None where ``needs`` says not needed)."""
    with _on_device_of(x):
        return _eq8_backward(x, w, box, ystat, s_xy, grad_out, c1, c2, geometry, needs)


def _eq8_forward(x, w, c1: float, c2: float, geometry, save_sxy: bool):
    if _FUSED_CONV:
        return _fused_eq8_forward(x, w, c1, c2, geometry, save_sxy)
    stride, padding, dilation, groups = geometry
    b, c_in, h, w_in = x.shape
    c_out, c_in_g, kh, kw = w.shape
    n = c_in_g * kh * kw
    ystat = torch.empty(2, c_out, device=x.device, dtype=x.dtype)  # written by the kernel
    s_xy = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)
    h_out, w_out = s_xy.shape[2:]
    out = torch.empty_like(s_xy) if save_sxy else s_xy  # overwritten in place when not needed
    box = torch.empty(b, 2 * groups, h_out, w_out, device=x.device, dtype=x.dtype)
    meta = forward_meta(w.shape, groups, h_out * w_out)
    n_blocks = _cdiv(h_out * w_out, meta["BLOCK"])
    splits, k_chunk = split_tiles(
        c_out // groups, meta["K_TILE"], _FORWARD_SPLIT, b * groups * n_blocks, _FORWARD_AUTO_SPLIT
    )
    if meta["STATS_ONCE"] and c_out:  # the backward reads ystat even for an empty batch
        stats_meta = filter_stats_meta(w.shape)
        _filter_stats_launch(
            (_cdiv(c_out, stats_meta["K_TILE"]),), w, ystat, n, c_out, **stats_meta
        )
    if b * groups * n_blocks:
        _forward_launch(
            (b * groups * n_blocks * splits,),
            x, w, s_xy, out, ystat, box,
            c_in_g, h, w_in, h_out, w_out, c_out // groups, groups, n_blocks, splits, k_chunk,
            *x.stride(), *s_xy.stride(), *stride, *padding, *dilation,
            n, float(c1), float(c2), **meta,
        )  # fmt: skip
    return out, box, ystat, (s_xy if save_sxy else None)


def _conv_layout(x: torch.Tensor) -> torch.memory_format:
    """The layout cuDNN gives a convolution's output: channels last for a channels-last input."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _fused_eq8_forward(x, w, c1: float, c2: float, geometry, save_sxy: bool):
    stride, padding, dilation, groups = geometry
    b, c_in, h, w_in = x.shape
    c_out, c_in_g, kh, kw = w.shape
    n = c_in_g * kh * kw
    h_out, w_out = _output_size((h, w_in), (kh, kw), geometry)
    out = torch.empty(b, c_out, h_out, w_out, device=x.device, dtype=x.dtype,
                      memory_format=_conv_layout(x))  # fmt: skip
    s_xy = torch.empty_like(out) if save_sxy else None
    ystat = torch.empty(2, c_out, device=x.device, dtype=x.dtype)  # written by the kernel
    box = torch.empty(b, 2 * groups, h_out, w_out, device=x.device, dtype=x.dtype)
    n_blocks = _cdiv(h_out * w_out, _block(h_out * w_out))
    tf32 = x.dtype == torch.float32 and _conv_tf32()
    meta, splits, k_chunk = fused_forward_meta(
        w.shape, groups, h_out * w_out, b * groups * n_blocks, tf32
    )
    if b * groups * n_blocks and c_out:
        _fused_forward_launch(
            (b * groups * n_blocks * splits,),
            x, w, out if s_xy is None else s_xy, out, ystat, box,
            c_in_g, h, w_in, h_out, w_out, c_out // groups, groups, n_blocks, splits, k_chunk,
            *x.stride(), *out.stride(), *stride, *padding, *dilation,
            n, float(c1), float(c2), SAVE_SXY=save_sxy, **meta,
        )  # fmt: skip
    return out, box, ystat, s_xy


def _eq8_backward(x, w, box, ystat, s_xy, grad_out, c1: float, c2: float, geometry, needs):
    stride, padding, dilation, groups = geometry
    b, c_in, h, w_in = x.shape
    c_out, c_in_g, kh, kw = w.shape
    n = c_in_g * kh * kw
    h_out, w_out = box.shape[2:]
    n_blocks = _cdiv(h_out * w_out, _block(h_out * w_out))
    if s_xy is None and _FUSED_CONV:  # not saved: the coefficient kernel computes it
        r = torch.empty(b, c_out, h_out, w_out, device=x.device, dtype=x.dtype,
                        memory_format=_conv_layout(x))  # fmt: skip
        tf32 = x.dtype == torch.float32 and _conv_tf32()
        meta, splits, k_chunk = fused_backward_meta(
            w.shape, groups, h_out * w_out, b * groups * n_blocks, tf32
        )
    else:
        if s_xy is None:  # not saved: recompute with one more convolution
            s_xy = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)
        r = torch.empty_like(s_xy)
        meta = backward_meta(w.shape, groups, h_out * w_out)
        splits, k_chunk = split_tiles(
            c_out // groups, meta["K_TILE"], _BACKWARD_SPLIT, b * groups * n_blocks
        )
    pq = torch.empty((splits, *box.shape), device=x.device, dtype=x.dtype)  # P, Q per split
    part = torch.empty(b * n_blocks, 2 * c_out, device=x.device, dtype=x.dtype)
    if b * groups * n_blocks and s_xy is None:
        _fused_backward_launch(
            (b * groups * n_blocks * splits,),
            grad_out, x, w, r, ystat, box, pq, part,
            c_in_g, h, w_in, h_out, w_out, c_out // groups, groups, n_blocks, splits, k_chunk,
            box.numel(), *grad_out.stride(), *r.stride(), *x.stride(),
            *stride, *padding, *dilation,
            n, float(c1), float(c2), **meta,
        )  # fmt: skip
    elif b * groups * n_blocks:
        _backward_launch(
            (b * groups * n_blocks * splits,),
            grad_out, s_xy, r, ystat, box, pq, part,
            h_out, w_out, c_out // groups, groups, n_blocks, splits, k_chunk, box.numel(),
            *grad_out.stride(), *s_xy.stride(),
            n, float(c1), float(c2), **meta,
        )  # fmt: skip
    if _CONV_BACKWARD and not torch.are_deterministic_algorithms_enabled():  # it adds atomically
        return _conv_window_terms(x, w, r, pq, part, geometry, needs)
    grad_x, grad_w, _ = _conv_backward(r, x, w, geometry, needs[0], needs[1])
    grad_x = grad_x if needs[0] else None  # some backends fill the gradients not asked for
    grad_w = grad_w.contiguous() if needs[1] else None
    meta = window_terms_meta(
        w.shape, groups, h * w_in, b * n_blocks, (bool(needs[0]), bool(needs[1]))
    )
    in_blocks = _cdiv(h * w_in, meta["BLOCK"])
    c_splits, c_chunk = split_tiles(c_in_g, meta["C_TILE"], _WINDOW_SPLIT, b * groups * in_blocks)
    input_programs = b * groups * in_blocks * c_splits if needs[0] else 0
    filter_programs = c_out if needs[1] else 0
    if input_programs + filter_programs:
        gx = grad_x if needs[0] else x  # an unused pointer where a gradient is not needed
        _window_terms_launch(
            (input_programs + filter_programs,),
            gx, x, pq, grad_w if needs[1] else w, w, part,
            c_in_g, h, w_in, h_out, w_out, groups, in_blocks, input_programs, splits, box.numel(),
            c_splits, c_chunk,
            *x.stride(), *gx.stride(), *stride, *padding, *dilation,
            b * n_blocks, n, c_out, **meta,
        )  # fmt: skip
    return grad_x, grad_w


def _conv_window_terms(x, w, r, pq, part, geometry, needs):
    """The backward's last launch with the convolution's backward of R inside
    (:func:`_conv_window_terms_kernel`): ``(grad_x, grad_w)``, None where not needed."""
    stride, padding, dilation, groups = geometry
    b, c_in, h, w_in = x.shape
    c_out, c_in_g, kh, kw = w.shape
    h_out, w_out = r.shape[2:]
    tf32 = x.dtype == torch.float32 and _conv_tf32()
    meta, programs = conv_window_terms_meta(
        w.shape, groups, h * w_in, h_out * w_out, b, (bool(needs[0]), bool(needs[1])), tf32
    )
    grad_x = torch.empty_like(x) if needs[0] else None  # every value written by the kernel
    grad_w = torch.zeros_like(w) if needs[1] else None  # the kernel adds to it
    filter_programs = c_out if needs[1] else 0
    grid = programs["conv_programs"] + programs["input_programs"] + filter_programs
    if grid:
        gx = x if grad_x is None else grad_x  # an unused pointer where a gradient is not needed
        _conv_window_terms_launch(
            (grid,),
            gx, x, pq, w if grad_w is None else grad_w, w, part, r,
            c_in_g, h, w_in, h_out, w_out, c_out // groups, groups, pq.shape[0], pq[0].numel(),
            *programs.values(), *x.stride(), *gx.stride(), *r.stride(), *stride, *padding, *dilation,
            part.shape[0], c_in_g * kh * kw, c_out, **meta,
        )  # fmt: skip
    return grad_x, grad_w
