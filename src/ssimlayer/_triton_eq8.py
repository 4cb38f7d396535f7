"""Eq. 8 on CUDA with hand-written Triton kernels: few launches, one convolution each way.

The maths is :mod:`ssimlayer.functional`'s (the same five sums, the same closed-form backward of
Eq. 18); only the scheduling differs. A forward is the convolution for Sxy and one kernel that
computes the filter statistics and Sx and Sxx of every patch in registers and applies Eq. 8 for
the group's filters. A backward is one kernel for the gradient coefficients, one
``convolution_backward`` for the input and filter terms of R, and one kernel whose programs add the
window terms to the input gradient or the per-filter terms to the filter gradient. At the sizes of
the paper (a conv forward plus backward under a millisecond on a current GPU) the step is bound by
how many kernels are launched, which is why this path exists; tests compare it with the float64
reference, also on the CPU through ``TRITON_INTERPRET=1``. :mod:`ssimlayer._fusion` decides when
it runs and checks it against the PyTorch path on first use.

Every schedule constant below is the one an H200 measured fastest (experiments/bench/README.md).

Layouts: ``box`` is ``(B, 2 G, Ho, Wo)`` with Sx for group g at channel g and Sxx at ``G + g`` (as in
:func:`ssimlayer.functional._patch_sums`); ``ystat`` is ``(2, C_out)``, the mean and unbiased
variance of each filter.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from ssimlayer._triton_launch import Launcher, launches_per_check, set_direct_launch
from ssimlayer.functional import _conv_backward

__all__ = ["eq8_forward", "eq8_backward", "launches_per_check", "set_direct_launch"]

# Output (or input) positions per program: 64 took 4 % less GPU time than 128 at the 32x32 shapes
# (32 and 16 were slower); at 8x8 an image has 64 positions, so 64 and 128 are the same schedule.
_BLOCK = 64
_C_TILE = 8  # input channels read at once by the forward kernel
_K_TILE = 8  # filters handled at once: 2-6 % less GPU time than 16 at the three shapes (4: slower)
_N_BLOCK = 64  # values of each filter read at once for its statistics
# Launches of fewer than _SPLIT_PROGRAMS programs (about 4 per SM of an H100 or H200) share each
# block of positions' filters (forward, gradient coefficients) or input channels (window terms)
# among programs, about that many in all: at 8x8, batch 128, a block is a whole image and one
# program per block makes 128 programs for 132 SMs. The backward's kernels gain from a split in 4
# (12.6 -> 6.4 and 13.3 -> 5.8 us), the forward from 2 but not beyond (its programs each compute
# the block's patch sums again: 22.2 us unsplit, 20.3 in 2, 24.7 in 4, 57.4 in 8).
_SPLIT_PROGRAMS = 512
_FORWARD_AUTO_SPLIT = 2


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
    K_TILE: tl.constexpr, N_BLOCK: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK output positions of one (batch, group) and the filters ``[s k_chunk,
    (s + 1) k_chunk)`` of the group, for the program's split ``s`` of ``splits`` (see
    :func:`split_tiles`); the programs of split 0 write the patch sums.

    Channels are read C_TILE at a time and filters handled K_TILE at a time, as 2-D tiles, so that
    many loads are in flight at once. Each program computes the statistics of its filters itself
    (re-reading the filters, which stay in cache, costs less than a launch of their own) and the
    first program of each group writes them to ``ystat`` for the backward.
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
    for c0 in range(0, c_in_g, C_TILE):  # every tap's load in each step over the channels
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
        mu_f, var_f = _filter_stats_tile(w_ptr, f, k_ok, n, K_TILE, N_BLOCK)
        tl.store(ystat_ptr + f, mu_f, mask=k_ok & first)
        tl.store(ystat_ptr + c_out + f, var_f, mask=k_ok & first)
        at = pos + f[:, None] * ss_c
        ok = k_ok[:, None] & inside[None, :]
        s_xy = tl.load(sxy_ptr + at, mask=ok, other=0.0)
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
    of ``splits`` (see :func:`split_tiles`). Writes R (output-sized, Sxy's strides), the input's
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
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """P and Q of the pixels ``(ih, iw)`` of group ``g``, each summed over every window that
    covers the pixel and over the ``pq_splits`` partial arrays of ``pq`` (``pq_split`` apart); the
    kernel's taps unrolled, so that all their loads are in flight at once."""
    dt = pq_ptr.dtype.element_ty
    p = tl.zeros([BLOCK], dtype=dt)
    q = tl.zeros([BLOCK], dtype=dt)
    pq = pq_ptr + b * (2 * groups * h_out * w_out)
    for _ in range(0, pq_splits):
        for i in tl.static_range(KH):
            for j in tl.static_range(KW):
                oh, ow, ok = _covering_window(
                    ih, iw, i, j, inside, h_out, w_out,
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
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW, BLOCK,
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
def _filter_terms(f, gw_ptr, w_ptr, part_ptr, rows, n, c_out, BLOCK: tl.constexpr):
    """grad_w[f] += P'_f + Q'_f w[f], with P', Q' summed over the partial rows (fixed order)."""
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
            _filter_terms(pid - input_programs, gw_ptr, w_ptr, part_ptr, rows, n, c_out, W_BLOCK)


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


def _warps(block: int) -> int:
    return 4 if block >= 128 else (2 if block >= 64 else 1)


@functools.lru_cache(maxsize=256)
def split_tiles(count: int, tile: int, blocks: int, cap: int = 0) -> tuple[int, int]:
    """``(splits, chunk)``: a group's ``count`` filters (or channels), in tiles of ``tile``, shared
    among enough programs per block of positions that the ``blocks`` blocks make about
    ``_SPLIT_PROGRAMS`` programs (at most ``cap`` per block if it is not 0), ``chunk`` of them
    (whole tiles) each."""
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
        num_warps=_warps(block),
    )  # fmt: skip


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def backward_meta(w_shape, groups: int, out_positions: int) -> dict:
    """The gradient-coefficient kernel's compile-time parameters and warps."""
    block = _block(out_positions)
    return dict(BLOCK=block, K_TILE=_tile(w_shape[0] // groups, _K_TILE), num_warps=_warps(block))


@functools.lru_cache(maxsize=256)  # every step asks again; callers only read it
def window_terms_meta(w_shape, groups: int, in_positions: int, part_rows: int, needs) -> dict:
    """The window-terms kernel's compile-time parameters and warps; ``part_rows`` is the number of
    partial rows the gradient-coefficient kernel wrote, ``needs`` a pair of bools."""
    c_out, c_in_g, kh, kw = w_shape
    block = _block(in_positions)
    w_block = _block(max(c_in_g * kh * kw, part_rows))
    return dict(
        KH=kh, KW=kw, BLOCK=block, C_TILE=_tile(c_in_g, _C_TILE), W_BLOCK=w_block,
        INPUT=needs[0], FILTER=needs[1], num_warps=max(_warps(block), _warps(w_block)),
    )  # fmt: skip


_forward_launch = Launcher(_forward_kernel, pointers=6)
_backward_launch = Launcher(_backward_kernel, pointers=7)
_window_terms_launch = Launcher(_window_terms_kernel, pointers=6)
LAUNCHERS = (_forward_launch, _backward_launch, _window_terms_launch)


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
        c_out // groups, meta["K_TILE"], b * groups * n_blocks, _FORWARD_AUTO_SPLIT
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


def _eq8_backward(x, w, box, ystat, s_xy, grad_out, c1: float, c2: float, geometry, needs):
    stride, padding, dilation, groups = geometry
    b, c_in, h, w_in = x.shape
    c_out, c_in_g, kh, kw = w.shape
    n = c_in_g * kh * kw
    h_out, w_out = box.shape[2:]
    if s_xy is None:  # not saved: recompute with one more convolution
        s_xy = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)
    r = torch.empty_like(s_xy)
    meta = backward_meta(w.shape, groups, h_out * w_out)
    n_blocks = _cdiv(h_out * w_out, meta["BLOCK"])
    splits, k_chunk = split_tiles(c_out // groups, meta["K_TILE"], b * groups * n_blocks)
    pq = torch.empty((splits, *box.shape), device=x.device, dtype=x.dtype)  # P, Q per split
    part = torch.empty(b * n_blocks, 2 * c_out, device=x.device, dtype=x.dtype)
    if b * groups * n_blocks:
        _backward_launch(
            (b * groups * n_blocks * splits,),
            grad_out, s_xy, r, ystat, box, pq, part,
            h_out, w_out, c_out // groups, groups, n_blocks, splits, k_chunk, box.numel(),
            *grad_out.stride(), *s_xy.stride(),
            n, float(c1), float(c2), **meta,
        )  # fmt: skip
    grad_x, grad_w, _ = _conv_backward(r, x, w, geometry, needs[0], needs[1])
    grad_x = grad_x if needs[0] else None  # some backends fill the gradients not asked for
    grad_w = grad_w.contiguous() if needs[1] else None
    meta = window_terms_meta(
        w.shape, groups, h * w_in, b * n_blocks, (bool(needs[0]), bool(needs[1]))
    )
    in_blocks = _cdiv(h * w_in, meta["BLOCK"])
    c_splits, c_chunk = split_tiles(c_in_g, meta["C_TILE"], b * groups * in_blocks)
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
