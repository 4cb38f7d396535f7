"""SSIM convolution: the structural similarity between every input patch and every filter.

This module holds all the maths of the SSIMLayer (Abobakr et al., "SSIMLayer: Towards Robust Deep
Representation Learning via Nonlinear Structural Similarity", §2), in the paper's order:

- :func:`ssim_conv2d`: the layer's function, Eq. 8 by default and the general Eq. 1 on request;
- :func:`_eq8_forward`: Eq. 8 from five sums (Eqs. 3, 5, 7 give the statistics);
- :class:`_SSIMConv2dEq8`: its analytic backward (§2.2: Eq. 18 generalised to N - 1);
- :func:`_general_forward`: Eq. 1, ``l^alpha c^beta s^gamma`` (Eqs. 2, 4, 6), autograd;
- the five sums, then the argument checks.

:class:`ssimlayer.SSIMConv2d` only stores parameters and calls :func:`ssim_conv2d`. Faster ways to
compute the same Eq. 8 (hand-written Triton kernels on CUDA, ``torch.compile`` of these functions)
live in modules above this one, which register themselves with :func:`register_accelerator`; this
module never imports them.

How it is computed without unfolding. For filter ``k`` of group ``g`` and output position ``p`` let
``x`` be the receptive field (exactly the ``N = C_in/groups * kh * kw`` values that
``torch.nn.functional.conv2d`` would multiply, zero padding included) and ``y`` the filter. Every
statistic of Eqs. 3, 5 and 7 follows from five sums::

    Sx  = sum_i x_i        Sxx = sum_i x_i^2     (one box filter over the channel sum: cheap)
    Sy  = sum_i y_i        Syy = sum_i y_i^2     (per filter: tiny)
    Sxy = sum_i x_i y_i    (exactly conv2d(x, y))

so the forward costs one convolution plus elementwise work, and the analytic backward costs the two
convolutions of an ordinary conv backward plus elementwise work. Nothing of size
``N x positions`` is ever materialised.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

__all__ = ["ssim_conv2d", "register_accelerator", "DEFAULT_C1", "DEFAULT_C2"]

# C1 = (K1 L)^2 and C2 = (K2 L)^2 with Wang et al.'s K1 = 0.01, K2 = 0.03 and dynamic range L = 1.
# Inside a network the inputs of the layer are not [0, 1] images: they are normalised images or hidden
# activations of order one, and the filters start N(0, 1) (§3.1). L = 1 matches that unit scale: the
# constants only act when both means (C1) or both variances (C2) are within ~0.01 of zero, where they
# keep Eq. 8 finite and its gradient bounded, and they leave the ratio untouched elsewhere.
DEFAULT_C1 = 1e-4
DEFAULT_C2 = 9e-4

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def ssim_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    c1: float = DEFAULT_C1,
    c2: float = DEFAULT_C2,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    c3: float | None = None,
) -> Tensor:
    r"""Structural similarity between each receptive field of ``input`` and each filter of ``weight``.

    Same arguments, same meaning and same output shape as :func:`torch.nn.functional.conv2d`; the
    output at each position is SSIM instead of a dot product. With the defaults it is Eq. 8 of the
    paper (:math:`\alpha = \beta = \gamma = 1`, :math:`C_3 = C_2 / 2`):

    .. math::
        \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                                   {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)}

    with means over the :math:`N = C_{in}/\text{groups} \cdot k_h k_w` values of the patch (Eq. 3) and
    unbiased variances and covariance, divided by :math:`N - 1` (Eqs. 5, 7). Eq. 8 lies in
    :math:`[-1, 1]` and equals 1 exactly when the patch equals the filter.

    Any other ``alpha``, ``beta``, ``gamma`` or ``c3`` selects the general Eq. 1,
    :math:`l^\alpha c^\beta s^\gamma` with Eqs. 2, 4 and the structure term of Wang et al.,
    :math:`s = (\sigma_{xy} + C_3) / (\sigma_x \sigma_y + C_3)`. (Eq. 6 as printed has
    :math:`2\sigma_{xy}` in its numerator; that is a typo, since only Wang et al.'s form reduces to
    Eq. 8 at :math:`C_3 = C_2/2`.) The luminance term :math:`l` is negative when the two means have
    opposite signs and :math:`s` is negative for anti-correlated patches; a negative number has no real
    non-integer power, so each term is raised with its sign kept,
    :math:`\operatorname{sign}(t)\,|t|^p`. This is continuous, odd, agrees with :math:`t^p` for
    :math:`t \ge 0` and for odd integer powers, and keeps the output in :math:`[-1, 1]`.

    The default path (Eq. 8) has an analytic backward (§2.2, Eq. 18) in a custom autograd Function
    that saves the input, the filters, the window sums and the convolution Sxy (or, for layers whose
    output is much larger than their input, recomputes Sxy in backward). The general path uses
    autograd through the same sums. Where an accelerator applies (Triton kernels for float32 CUDA
    tensors, ``torch.compile`` for large float32 work; see :func:`register_accelerator`) it
    computes the same Eq. 8 faster. Statistics are always computed in float32 or wider: float16/bfloat16
    inputs, or autocast, give a float32 computation whose result is returned in float32 under
    autocast and cast back to the input dtype otherwise.

    Args:
        input: :math:`(B, C_{in}, H, W)` or unbatched :math:`(C_{in}, H, W)`.
        weight: filters :math:`(C_{out}, C_{in}/\text{groups}, k_h, k_w)`.
        bias: optional :math:`(C_{out},)` added to the similarity.
        stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv2d` (zero padding;
            ``padding`` may also be ``"valid"`` or ``"same"``).
        c1: luminance stabiliser :math:`C_1 > 0`. Default ``1e-4``: :math:`(0.01 L)^2` with
            :math:`L = 1`, the unit scale of normalised inputs, hidden activations and N(0, 1) filters
            (the layer rarely sees [0, 1] images, so L is not an image's dynamic range).
        c2: contrast stabiliser :math:`C_2 > 0`. Default ``9e-4``: :math:`(0.03 L)^2`, likewise.
        alpha, beta, gamma: exponents of Eq. 1, each > 0.
        c3: structure stabiliser of Eq. 6; ``None`` means :math:`C_2 / 2`.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, H_{out}, W_{out})`, :math:`H_{out}` and :math:`W_{out}` as conv2d.

    Examples:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> w = torch.randn(4, 3, 3, 3)
        >>> ssim_conv2d(x, w, padding=1).shape
        torch.Size([2, 4, 8, 8])
        >>> patch = x[:1, :, :3, :3]  # a patch against itself: SSIM = 1
        >>> round(ssim_conv2d(patch, patch).item(), 5)
        1.0
    """
    c3 = c2 / 2 if c3 is None else c3
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(
            f"ssim_conv2d: input and weight must be tensors, got {type(input).__name__} "
            f"and {type(weight).__name__}"
        )
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    if isinstance(padding, str):
        input, padding = _resolve_padding(input, weight, padding, stride, dilation)
    stride, padding, dilation = _checked_arguments(
        input, weight, bias, stride, padding, dilation, groups, (c1, c2, c3, alpha, beta, gamma)
    )

    device_type = input.device.type
    autocast = torch.is_autocast_enabled(device_type)
    out_dtype = torch.float32 if autocast else input.dtype
    compute_dtype = torch.float32 if input.dtype in _LOW_PRECISION else input.dtype
    x = input if input.dtype == compute_dtype else input.to(compute_dtype)
    w = weight if weight.dtype == compute_dtype else weight.to(compute_dtype)
    if bias is not None and bias.dtype != compute_dtype:
        bias = bias.to(compute_dtype)
    args = (x, w, bias, c1, c2, c3, alpha, beta, gamma, (stride, padding, dilation, groups))
    if autocast:  # statistics in float32 whatever autocast would pick
        with torch.autocast(device_type, enabled=False):
            out = _ssim(*args)
    else:  # (entering the context costs more than the rest of this wrapper)
        out = _ssim(*args)
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    return out.squeeze(0) if unbatched else out


def _ssim(x, w, bias, c1, c2, c3, alpha, beta, gamma, geometry) -> Tensor:
    if alpha == beta == gamma == 1.0 and c3 == c2 / 2:
        out = _eq8(x, w, c1, c2, geometry)
    else:
        out = _general_forward(x, w, c1, c2, c3, alpha, beta, gamma, geometry)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


# Accelerators: faster ways to compute Eq. 8 for some inputs, registered by the modules that provide
# them (ssimlayer._fusion: Triton kernels on CUDA, torch.compile; ``import ssimlayer`` imports it).
# Each is called as ``fn(x, w, c1, c2, geometry)`` and returns Eq. 8, differentiable, or None where it
# does not apply; the first answer is used, else the eager PyTorch path below.
_ACCELERATORS: list[Callable] = []


def register_accelerator(fn: Callable) -> Callable:
    """Let ``fn(x, w, c1, c2, geometry) -> Tensor | None`` compute Eq. 8 where it applies (tried in
    the order registered, before the eager path); returns ``fn``."""
    if fn not in _ACCELERATORS:
        _ACCELERATORS.append(fn)
    return fn


def _eq8(x: Tensor, w: Tensor, c1: float, c2: float, geometry) -> Tensor:
    """Eq. 8 through the first accelerator that applies, else :func:`eq8_pytorch`."""
    for accelerator in _ACCELERATORS:
        out = accelerator(x, w, c1, c2, geometry)
        if out is not None:
            return out
    return eq8_pytorch(x, w, c1, c2, geometry)


def _eager(fn: Callable, size_hint: Tensor, *args):
    """``fn(*args)``: how :func:`eq8_pytorch` runs its parts unless given another ``run`` (such as
    :func:`ssimlayer._fusion.fused`, which compiles them when ``size_hint`` is large)."""
    return fn(*args)


def eq8_pytorch(x: Tensor, w: Tensor, c1: float, c2: float, geometry, run=_eager) -> Tensor:
    """Eq. 8 in PyTorch, with the analytic backward where a gradient is needed; ``run`` runs each
    elementwise part (see :func:`_eager`)."""
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return _SSIMConv2dEq8.apply(x, w, c1, c2, geometry, run)
    return run(_eq8_forward, x, x, w, c1, c2, geometry)[0]  # inference: nothing saved


# ---------------------------------------------------------------------------------------------
# Eq. 8 (forward) and its analytic backward (§2.2, Eq. 18)


def _eq8_forward(x: Tensor, w: Tensor, c1: float, c2: float, geometry, keep_sxy: bool = False):
    """Eq. 8 as ``(B, C_out, Ho, Wo)``, the patch sums ``(B, 2g, Ho, Wo)`` and, if asked, Sxy."""
    groups = geometry[3]
    mu_y, var_y, n = _filter_stats(w, groups)
    box, s_xy = _sums(x, w, geometry)
    out = _eq8_epilogue(s_xy, box, mu_y, var_y, n, c1, c2)
    b, g, k, h_out, w_out = out.shape
    return out.view(b, g * k, h_out, w_out), box, (s_xy if keep_sxy else None)


def _eq8_epilogue(s_xy, box, mu_y, var_y, n: int, c1: float, c2: float):
    """Eq. 8 from the sums, ``(B, g, K, Ho, Wo)``."""
    mu_x, var_x = _patch_stats(box, n)
    cov = _covariance(s_xy, mu_x, mu_y, n)
    a1, b1, a2, b2 = _eq8_terms(mu_x, var_x, mu_y, var_y, cov, c1, c2)
    return (a1 * a2) / (b1 * b2)


def _eq8_terms(mu_x, var_x, mu_y, var_y, cov, c1, c2):
    """A1, B1 (luminance) and A2, B2 (contrast-structure) of Eq. 17, broadcast to (B, g, K, Ho, Wo)."""
    a1 = (2 * mu_x) * mu_y + c1
    b1 = mu_x.square() + mu_y.square() + c1
    a2 = 2 * cov + c2
    b2 = var_x + var_y + c2
    return a1, b1, a2, b2


# From this many output elements on, a backward with Sxy saved is compiled as two graphs around its
# convolution (its stacked terms, three output-sized tensors, then never live beside the
# convolution's); below it, and when Sxy is recomputed in batch chunks (which bound those terms
# already), as one graph, which saves calls' host time. On the 2-core CPU at 64 -> 64, 32x32, batch
# 32: peak memory 1.34x instead of 1.83x a convolution's, for about as much time (within the
# noise); two graphs took 8 % more time at 8x8 and, chunked, 3-10 % more at 3 -> 64, 7x7.
SPLIT_BACKWARD_NUMEL = 1 << 20
# Batch chunks of a backward that recomputes Sxy: bounds its output-sized temporaries to 1/4.
RECOMPUTE_CHUNKS = 4


class _SSIMConv2dEq8(torch.autograd.Function):
    """Eq. 8 forward; backward from the closed-form partial derivatives of §2.2.

    With S = A1 A2 / (B1 B2) (Eq. 17), the derivatives with respect to the statistics are
    dS/dmu_x = 2 (A2/(B1 B2) mu_y - S/B1 mu_x), dS/dcov = 2 A1/(B1 B2) and
    dS/dvar_x = dS/dvar_y = -S/B2. Because dmu/dx_i = 1/N, dvar_x/dx_i = 2 (x_i - mu_x)/(N-1) and
    dcov/dx_i = (y_i - mu_y)/(N-1), the gradient with respect to every patch value is
    ``P + Q x_i + R y_i`` with per-(position, filter) scalars P, Q, R; the same holds for the filter
    with x and y swapped. Summed over positions these are one transposed convolution of R with the
    filters, one of R with the input (the two convs of an ordinary conv backward), and box filters
    of P and Q. For a single window this is Eq. 18 (Wang and Simoncelli) with N - 1 in place of N.
    Saved for backward: the input, the filters, the patch sums (small) and Sxy, the convolution
    (output-sized), unless the layer expands its input (see :func:`_keeps_sxy`), where backward
    recomputes it. ``run`` runs each elementwise part (see :func:`_eager`).
    """

    @staticmethod
    def forward(ctx, x, w, c1, c2, geometry, run):
        keep_sxy = _keeps_sxy(x, w, geometry)
        out, box, s_xy = run(_eq8_forward, x, x, w, c1, c2, geometry, keep_sxy)
        ctx.save_for_backward(x, w, box, s_xy)
        ctx.constants = (c1, c2, geometry, run)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w, box, s_xy = ctx.saved_tensors
        c1, c2, geometry, run = ctx.constants
        needs = tuple(ctx.needs_input_grad[:2])
        args = (x, w, box, s_xy, grad_out, c1, c2, geometry, needs, run)
        if s_xy is None or grad_out.numel() < SPLIT_BACKWARD_NUMEL:  # one call: less host time
            grad_x, grad_w = run(_eq8_backward, x, *args)
        else:  # compiled in parts: the stacked terms are freed before the convolutions run
            grad_x, grad_w = _eq8_backward(*args)
        return grad_x, grad_w, None, None, None, None


def _eq8_backward(x, w, box, s_xy, grad_out, c1: float, c2: float, geometry, needs, run=_eager):
    """Gradients of Eq. 8 with respect to the input and the filters (None where not needed).

    When Sxy was not saved (see :func:`_keeps_sxy`) it is recomputed, one batch chunk at a time, so
    that it and the gradient's coefficients never exist for the whole batch.
    """
    if s_xy is not None or x.shape[0] <= 1:
        return _eq8_backward_part(x, w, box, s_xy, grad_out, c1, c2, geometry, needs, run)
    chunks = min(x.shape[0], RECOMPUTE_CHUNKS)
    parts = [
        _eq8_backward_part(xc, w, bc, None, gc, c1, c2, geometry, needs, run)
        for xc, bc, gc in zip(x.chunk(chunks), box.chunk(chunks), grad_out.chunk(chunks))
    ]
    grad_x = torch.cat([p[0] for p in parts]) if needs[0] else None
    grad_w = torch.stack([p[1] for p in parts]).sum(0) if needs[1] else None
    return grad_x, grad_w


def _eq8_backward_part(x, w, box, s_xy, grad_out, c1: float, c2: float, geometry, needs, run):
    stride, padding, dilation, groups = geometry
    if s_xy is None:  # not saved (see _keeps_sxy): one more convolution
        s_xy = F.conv2d(x, w, None, stride, padding, dilation, groups)
    args = (grad_out, s_xy, box, w, c1, c2, groups, needs)
    r, x_terms, y_terms = run(_eq8_grad_terms, grad_out, *args)
    # The R terms of both gradients, as an ordinary conv backward computes them: the input's sum over
    # (position, filter) of R y_i, the filter's sum over (batch, position) of R x_i. (Called with the
    # real input and filters: torch.nn.grad.conv2d_input / conv2d_weight pass expanded stand-ins,
    # which the CPU backend copies into full-size tensors first.)
    grad_x, grad_w, _ = _conv_backward(r, x, w, geometry, needs[0], needs[1])
    if needs[0]:  # + P + Q x_i, P and Q summed over every window that covers the pixel
        grad_x = run(_add_window_terms, x, grad_x, x_terms, x, w.shape[2:], geometry)
    else:
        grad_x = None  # some backends fill the gradients not asked for
    if needs[1]:  # + P' + Q' y_i
        grad_w = grad_w + y_terms[1] + y_terms[0] * w
    else:
        grad_w = None
    return grad_x, grad_w


def _eq8_grad_summands(grad_out, s_xy, box, w, c1: float, c2: float, groups: int, needs):
    """The gradient's coefficients at every (position, filter), see :class:`_SSIMConv2dEq8`.

    Returns ``r`` (shaped as ``grad_out``) and the summands of the other terms stacked as
    ``(B, m, g, K, Ho, Wo)``: ``[P, Q]`` when the input's gradient is needed (their sums over
    filters, dim 3, are the input's P and Q), then ``P'`` when the filters' is (with Q, summed over
    batch and positions: the filters' P' and Q'). Elementwise work only: reduced after it, the stack
    keeps a compiled backward from recomputing these coefficients inside reductions that stride
    over the filters (1.5x slower on the CPU).
    """
    mu_y, var_y, n = _filter_stats(w, groups)
    mu_x, var_x = _patch_stats(box, n)
    b, c_out, h_out, w_out = grad_out.shape
    shape = (b, groups, c_out // groups, h_out, w_out)
    cov = _covariance(s_xy.reshape(shape), mu_x, mu_y, n)
    a1, b1, a2, b2 = _eq8_terms(mu_x, var_x, mu_y, var_y, cov, c1, c2)
    t = 1 / (b1 * b2)  # the one division: 1 / B1 = B2 t and 1 / B2 = B1 t
    inv = grad_out.to(cov.dtype).reshape(shape) * t
    d_a1 = inv * a2  # g dS/dA1
    g_s = d_a1 * a1  # g S
    d_b1 = g_s * (b2 * t)  # -g dS/dB1
    two = 2 / (n - 1)
    r = inv * a1 * two  # g dS/dcov / (N - 1)
    q = -two * g_s * (b1 * t)  # g dS/dvar_x 2 / (N - 1), the same for var_y
    summands = []
    if needs[0]:
        d_mu_x = 2 * (d_a1 * mu_y - d_b1 * mu_x)
        summands += [d_mu_x * (1 / n) - q * mu_x - r * mu_y, q]
    if needs[1]:
        d_mu_y = 2 * (d_a1 * mu_x - d_b1 * mu_y)
        summands += [] if needs[0] else [q]
        summands += [d_mu_y * (1 / n) - q * mu_y - r * mu_x]
    return r.reshape(grad_out.shape), torch.stack(summands, dim=1)


def _eq8_grad_terms(grad_out, s_xy, box, w, c1: float, c2: float, groups: int, needs):
    """``r``, the windows' P and Q ``(B, 2g, Ho, Wo)`` and the filters' Q' and P' ``(2, C_out, 1,
    1, 1)`` (None where not needed), from :func:`_eq8_grad_summands`."""
    r, summands = _eq8_grad_summands(grad_out, s_xy, box, w, c1, c2, groups, needs)
    x_terms = summands[:, :2].sum(3).flatten(1, 2) if needs[0] else None
    y_terms = summands[:, -2:].sum((0, 4, 5)).reshape(2, -1, 1, 1, 1) if needs[1] else None
    return r, x_terms, y_terms


def _add_window_terms(grad_x: Tensor, terms: Tensor, x: Tensor, kernel_size, geometry) -> Tensor:
    """grad_x + P + Q x_i, with P and Q ``(B, 2g, Ho, Wo)`` summed over every window of each pixel."""
    stride, padding, dilation, groups = geometry
    box_t = _window_sums_adjoint(terms, x.shape[2:], kernel_size, stride, padding, dilation)
    b, c_in, h, w = x.shape
    shape = (b, groups, c_in // groups, h, w)
    p_pix, q_pix = box_t[:, :groups].unsqueeze(2), box_t[:, groups:].unsqueeze(2)
    return (grad_x.reshape(shape) + p_pix + q_pix * x.reshape(shape)).reshape(b, c_in, h, w)


# ---------------------------------------------------------------------------------------------
# The general Eq. 1


def _general_forward(x, w, c1, c2, c3, alpha, beta, gamma, geometry) -> Tensor:
    """Eq. 1: l^alpha * c^beta * s^gamma, with autograd through the same sums."""
    mu_y, var_y, n = _filter_stats(w, geometry[3])
    box, s_xy = _sums(x, w, geometry)
    mu_x, var_x = _patch_stats(box, n)
    cov = _covariance(s_xy, mu_x, mu_y, n)
    eps = torch.finfo(x.dtype).tiny
    sd_x, sd_y = (var_x + eps).sqrt(), (var_y + eps).sqrt()
    lum = (2 * mu_x * mu_y + c1) / (mu_x.square() + mu_y.square() + c1)  # Eq. 2
    con = (2 * sd_x * sd_y + c2) / (var_x + var_y + c2)  # Eq. 4
    struct = (cov + c3) / (sd_x * sd_y + c3)  # Eq. 6 (Wang et al.)
    out = _signed_pow(lum, alpha) * _signed_pow(con, beta) * _signed_pow(struct, gamma)
    b, g, k, h_out, w_out = out.shape
    return out.reshape(b, g * k, h_out, w_out)


def _signed_pow(t: Tensor, p: float) -> Tensor:
    if p == 1.0:
        return t
    return t.sign() * t.abs().clamp_min(torch.finfo(t.dtype).tiny).pow(p)


# ---------------------------------------------------------------------------------------------
# The five sums and the statistics (Eqs. 3, 5, 7)


def _sums(x: Tensor, w: Tensor, geometry):
    stride, padding, dilation, groups = geometry
    box = _patch_sums(x, w.shape[2:], geometry)  # (B, 2g, Ho, Wo)
    s_xy = F.conv2d(x, w, None, stride, padding, dilation, groups)  # (B, C_out, Ho, Wo)
    b, c_out, h_out, w_out = s_xy.shape
    return box, s_xy.view(b, groups, c_out // groups, h_out, w_out)  # (B, g, K, Ho, Wo)


def _channel_sums(x: Tensor, groups: int) -> Tensor:
    """Per-group channel sums of x and x^2, ``(B, 2 * groups, H, W)``.

    The ones-kernel of Sx and Sxx commutes with the sum over channels, so the box filter runs on these
    2 * groups maps instead of on all C_in channels.
    """
    b, c_in, h, w = x.shape
    x_g = x.reshape(b, groups, c_in // groups, h, w)
    return torch.cat([x_g.sum(2), x_g.square().sum(2)], dim=1)


def _patch_sums(x: Tensor, kernel_size, geometry) -> Tensor:
    """Sx and Sxx over every receptive field, stacked per group: ``(B, 2 * groups, Ho, Wo)``."""
    stride, padding, dilation, groups = geometry
    return _window_sums(_channel_sums(x, groups), kernel_size, stride, padding, dilation)


def _window_sums(t: Tensor, kernel_size, stride, padding, dilation) -> Tensor:
    """The sum of every zero-padded window of each map: conv2d with a kernel of ones per channel.

    As ``kh`` row sums, then ``kw`` column sums, of strided slices: on the CPU a depthwise
    convolution of these few maps costs as much as a tenth of the layer's main convolution, and
    slices fuse into one loop when compiled. Negative padding crops. Eager on CUDA it is the
    convolution: one kernel launch instead of ``kh + kw + 1``.
    """
    if _by_convolution(t):
        ones = t.new_ones(t.shape[1], 1, *kernel_size)
        return F.conv2d(t, ones, None, stride, padding, dilation, t.shape[1])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    t = F.pad(t, (pw, pw, ph, ph))
    h_out = (t.shape[2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (t.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = _sum(t[:, :, u * dh : u * dh + (h_out - 1) * sh + 1 : sh] for u in range(kh))
    return _sum(rows[:, :, :, v * dw : v * dw + (w_out - 1) * sw + 1 : sw] for v in range(kw))


def _window_sums_adjoint(t: Tensor, in_size, kernel_size, stride, padding, dilation) -> Tensor:
    """The transpose of :func:`_window_sums` onto maps of ``in_size``: each window's value added to
    every pixel of the window (the ones-kernel's ``conv_transpose2d``).

    With zeros between the values for a stride, it is a window sum padded by ``(k - 1) d - p``
    (the ones-kernel is symmetric), with zeros after the end for the pixels past the last window.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    b, c, h_out, w_out = t.shape
    if _by_convolution(t):
        ones = t.new_ones(c, 1, kh, kw)
        stand_in = t.new_empty(b, c, *in_size)  # only its shape is read
        return _conv_backward(t, stand_in, ones, (stride, padding, dilation, c))[0]
    if (sh, sw) != (1, 1):
        spread = t.new_zeros(b, c, (h_out - 1) * sh + 1, (w_out - 1) * sw + 1)
        spread[:, :, ::sh, ::sw] = t
        t = spread
    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    bottom = in_size[0] + dh * (kh - 1) - top - t.shape[2]
    right = in_size[1] + dw * (kw - 1) - left - t.shape[3]
    t = F.pad(t, (left, right, top, bottom))
    return _window_sums(t, kernel_size, (1, 1), (0, 0), dilation)


def _by_convolution(t: Tensor) -> bool:
    """Window sums as a depthwise convolution (eager CUDA) rather than as slices."""
    return t.is_cuda and not torch.compiler.is_compiling()


def _sum(tensors):
    """The sum of an iterable of tensors, without Python's leading 0 +."""
    return functools.reduce(operator.add, tensors)


def _filter_stats(w: Tensor, groups: int) -> tuple[Tensor, Tensor, int]:
    """Mean and unbiased variance of each filter as ``(1, groups, C_out/groups, 1, 1)``, and N."""
    n = w[0].numel()
    flat = w.reshape(w.shape[0], -1)
    mu_y = flat.mean(1)
    var_y = (flat.square().sum(1) - n * mu_y.square()).clamp_min(0) / (n - 1)
    shape = (1, groups, w.shape[0] // groups, 1, 1)
    return mu_y.view(shape), var_y.view(shape), n


def _patch_stats(box: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Mean (Eq. 3) and unbiased variance (Eq. 5 squared) of every patch, ``(B, g, 1, Ho, Wo)``.

    Here and in the terms built on these, dividing by N or N - 1 is multiplying by the reciprocal
    (a Python float): Inductor keeps a division as one vector division per element, several times
    the cost of a multiplication, and these run at every (position, filter).
    """
    groups = box.shape[1] // 2
    mu_x = (box[:, :groups] * (1 / n)).unsqueeze(2)
    var_x = ((box[:, groups:].unsqueeze(2) - n * mu_x.square()) * (1 / (n - 1))).clamp_min(0)
    return mu_x, var_x


def _covariance(s_xy: Tensor, mu_x: Tensor, mu_y: Tensor, n: int) -> Tensor:
    """Unbiased covariance (Eq. 7) from Sxy: (Sxy - N mu_x mu_y) / (N - 1), ``(B, g, K, Ho, Wo)``."""
    return (s_xy - mu_x * (n * mu_y)) * (1 / (n - 1))


def _keeps_sxy(x: Tensor, w: Tensor, geometry) -> bool:
    """Save Sxy (the convolution) for backward unless the output is much larger than the input.

    Saving the output-sized Sxy spares one convolution in backward. When the layer expands (a
    3-channel image into 64 maps, say) that tensor dwarfs what nn.Conv2d keeps (its input), so
    backward recomputes Sxy with one more convolution instead: cheap exactly there, since the cost
    of that convolution scales with C_in / groups.
    """
    if torch.compiler.is_compiling():  # traced once, no cache needed (Dynamo warns about one)
        return _keeps_sxy_for.__wrapped__(x.shape[1:], w.shape, geometry)
    return _keeps_sxy_for(x.shape[1:], w.shape, geometry)


@functools.lru_cache(maxsize=1024)  # called every step with the same few shapes
def _keeps_sxy_for(in_shape, w_shape, geometry) -> bool:
    h_out, w_out = _output_size(in_shape[1:], w_shape[2:], geometry)
    return w_shape[0] * h_out * w_out <= 2 * in_shape[0] * in_shape[1] * in_shape[2]


def _output_size(in_hw, kernel_hw, geometry) -> tuple[int, int]:
    """conv2d's output height and width for an input of ``in_hw`` and a kernel of ``kernel_hw``."""
    stride, padding, dilation, _ = geometry
    h_out, w_out = (
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, p, d, s in zip(in_hw, kernel_hw, padding, dilation, stride)
    )
    return h_out, w_out


def _conv_backward(grad_out, x, w, geometry, input_grad: bool = True, weight_grad: bool = False):
    """``aten.convolution_backward`` of ``conv2d(x, w)`` without bias: (grad_x, grad_w, None)."""
    stride, padding, dilation, groups = geometry
    return torch.ops.aten.convolution_backward(
        grad_out, x, w, None, stride, padding, dilation, False, [0, 0], groups,
        [input_grad, weight_grad, False],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Argument checks: every message says what was received and what would work

# Configurations whose arguments passed every check, with their (stride, padding, dilation) as
# pairs. A layer is called again and again with the same shapes; on a GPU at small sizes the host
# time of the checks is a visible part of a step, so they run once per configuration.
_checked: dict[tuple, tuple] = {}
_CHECKED_MAX = 4096


def _checked_arguments(input, weight, bias, stride, padding, dilation, groups, scalars):
    """``(stride, padding, dilation)`` as pairs, once every argument has passed the checks."""
    key = None
    if not torch.compiler.is_compiling():  # a trace checks once anyway; a cache would add guards
        key = (
            input.shape, input.dtype, weight.shape, weight.dtype,
            None if bias is None else (bias.shape, bias.dtype),
            stride, padding, dilation, groups, scalars,
        )  # fmt: skip
        try:
            found = _checked.get(key)
        except TypeError:  # unhashable arguments (lists, say): check them every time
            key = found = None
        if found is not None:
            return found
    _check_scalars(*scalars)
    geometry = _pair(stride), _pair(padding), _pair(dilation)
    _check_shapes(input, weight, bias, *geometry, groups)
    if key is not None:
        if len(_checked) >= _CHECKED_MAX:
            _checked.clear()
        _checked[key] = geometry
    return geometry


def _check_scalars(c1, c2, c3, alpha, beta, gamma) -> None:
    for name, value in (("c1", c1), ("c2", c2), ("c3", c3)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(
                f"ssim_conv2d: {name} must be a finite number > 0 (it keeps the ratio finite), "
                f"got {value!r}"
            )
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(
                f"ssim_conv2d: {name} must be a finite number > 0 (Eq. 1), got {value!r}"
            )


def _resolve_padding(input: Tensor, weight: Tensor, padding, stride, dilation):
    """Turn ``"valid"``/``"same"`` into numbers, zero-padding by hand when 'same' is asymmetric."""
    if not isinstance(padding, str):
        return input, padding
    if padding == "valid":
        return input, 0
    if padding != "same":
        raise ValueError(
            f"ssim_conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}"
        )
    if _pair(stride) != (1, 1):
        raise ValueError(
            f"ssim_conv2d: padding='same' needs stride 1 (as conv2d), got stride={stride!r}"
        )
    if weight.dim() != 4:
        return input, 0  # _check_shapes reports the weight
    totals = [d * (k - 1) for d, k in zip(_pair(dilation), weight.shape[2:])]
    if all(t % 2 == 0 for t in totals):
        return input, (totals[0] // 2, totals[1] // 2)
    (th, tw) = totals
    return F.pad(input, (tw // 2, tw - tw // 2, th // 2, th - th // 2)), 0


def _check_shapes(input, weight, bias, stride, padding, dilation, groups) -> None:
    if input.dim() != 4:
        raise ValueError(
            f"ssim_conv2d: expected input of shape (B, C_in, H, W) or (C_in, H, W), "
            f"got {tuple(input.shape)}"
        )
    if weight.dim() != 4:
        raise ValueError(
            f"ssim_conv2d: expected weight of shape (C_out, C_in/groups, kh, kw), "
            f"got {tuple(weight.shape)}"
        )
    if not input.is_floating_point() or not weight.is_floating_point():
        raise TypeError(
            f"ssim_conv2d: input and weight must be floating point, got {input.dtype} and "
            f"{weight.dtype}; convert images with .float() (and scale to [0, 1])"
        )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"ssim_conv2d: groups must be a positive int, got {groups!r}")
    c_in, c_out = input.shape[1], weight.shape[0]
    if c_in % groups != 0:
        raise ValueError(
            f"ssim_conv2d: in_channels={c_in} is not divisible by groups={groups}; "
            f"choose groups that divide the input channels"
        )
    if c_out % groups != 0:
        raise ValueError(
            f"ssim_conv2d: out_channels={c_out} is not divisible by groups={groups}; "
            f"choose groups that divide the output channels"
        )
    if weight.shape[1] * groups != c_in:
        raise ValueError(
            f"ssim_conv2d: weight of shape {tuple(weight.shape)} expects "
            f"{weight.shape[1] * groups} input channels with groups={groups}, but the input has "
            f"{c_in} (input shape {tuple(input.shape)})"
        )
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(p < 0 for p in padding):
        raise ValueError(
            f"ssim_conv2d: need stride >= 1, dilation >= 1 and padding >= 0, got stride={stride}, "
            f"padding={padding}, dilation={dilation}"
        )
    n = weight[0].numel()
    if n < 2:
        raise ValueError(
            f"ssim_conv2d: each patch has N = C_in/groups * kh * kw = {n} value; the unbiased "
            f"variances of Eqs. 5 and 7 need N >= 2 (use a larger kernel or fewer groups)"
        )
    for dim, (size, k, p, d) in enumerate(
        zip(input.shape[2:], weight.shape[2:], padding, dilation)
    ):
        if size + 2 * p < d * (k - 1) + 1:
            raise ValueError(
                f"ssim_conv2d: kernel of extent {d * (k - 1) + 1} (size {k}, dilation {d}) is larger "
                f"than the padded input ({size} + 2*{p} = {size + 2 * p}) along "
                f"{'height' if dim == 0 else 'width'}; use a smaller kernel or more padding"
            )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != c_out):
        raise ValueError(f"ssim_conv2d: bias must have shape ({c_out},), got {tuple(bias.shape)}")
