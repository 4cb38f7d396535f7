"""Slow, obviously-correct SSIM convolution: unfold every patch and apply Eqs. 3-8 literally (float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def unfold_patches(x, kernel_size, stride, padding, dilation, groups):
    """Every receptive field as ``(B, groups, N, L)``: the values conv2d multiplies, padding included."""
    b, c_in, _, _ = x.shape
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    n = c_in // groups * kernel_size[0] * kernel_size[1]
    return cols.view(b, groups, n, cols.shape[-1])  # (B, g, C_in/g * kh * kw, L)


def ssim_conv2d_reference(
    x,
    w,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    c1=1e-4,
    c2=9e-4,
    alpha=1.0,
    beta=1.0,
    gamma=1.0,
    c3=None,
):
    """Literal Eqs. 1-8 on unfolded patches. Returns ``(B, C_out, H_out, W_out)``."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    c3 = c2 / 2 if c3 is None else c3
    b, _, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    k = c_out // groups
    patches = unfold_patches(x, (kh, kw), stride, padding, dilation, groups)  # (B, g, N, L)
    n = patches.shape[2]
    xs = patches.unsqueeze(2)  # (B, g, 1, N, L)
    ys = w.reshape(groups, k, n, 1).unsqueeze(0)  # (1, g, K, N, 1)
    mu_x = xs.mean(3, keepdim=True)  # Eq. 3
    mu_y = ys.mean(3, keepdim=True)
    var_x = ((xs - mu_x) ** 2).sum(3, keepdim=True) / (n - 1)  # Eq. 5, squared
    var_y = ((ys - mu_y) ** 2).sum(3, keepdim=True) / (n - 1)
    cov = ((xs - mu_x) * (ys - mu_y)).sum(3, keepdim=True) / (n - 1)  # Eq. 7
    if alpha == beta == gamma == 1.0 and c3 == c2 / 2:
        out = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
            (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        )  # Eq. 8
    else:
        sd_x, sd_y = var_x.sqrt(), var_y.sqrt()
        lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)  # Eq. 2
        con = (2 * sd_x * sd_y + c2) / (var_x + var_y + c2)  # Eq. 4
        st = (cov + c3) / (sd_x * sd_y + c3)  # Eq. 6 (Wang et al.'s numerator)

        def spow(t, p):
            return t.sign() * t.abs() ** p

        out = spow(lum, alpha) * spow(con, beta) * spow(st, gamma)  # Eq. 1
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return out.reshape(b, c_out, h_out, w_out)


def eq18_filter_gradient(x_patch, y, c1, c2):
    """dSSIM/dy for one patch and one filter, Eq. 18 (Wang and Simoncelli) with N - 1 variances.

    With unbiased statistics the printed Eq. 18, whose variances divide by N, becomes
    2/(B1^2 B2^2) [ (A2 B2 / N)(B1 mu_x - A1 mu_y) + (A1 B1 B2 (x - mu_x) - A1 A2 B1 (y - mu_y))/(N-1) ],
    which equals Eq. 18 term by term when N - 1 is replaced by N.
    """
    n = x_patch.numel()
    x, y = x_patch.reshape(-1), y.reshape(-1)
    mu_x, mu_y = x.mean(), y.mean()
    var_x, var_y = x.var(), y.var()
    cov = ((x - mu_x) * (y - mu_y)).sum() / (n - 1)
    a1, b1 = 2 * mu_x * mu_y + c1, mu_x**2 + mu_y**2 + c1
    a2, b2 = 2 * cov + c2, var_x + var_y + c2
    grad = (a2 * b2 / n) * (b1 * mu_x - a1 * mu_y) + (
        a1 * b1 * b2 * (x - mu_x) - a1 * a2 * b1 * (y - mu_y)
    ) / (n - 1)
    return (2 / (b1**2 * b2**2) * grad).reshape(x_patch.shape)


def ssim_conv2d_unfold(x, w, stride=1, padding=0, dilation=1, groups=1, c1=1e-4, c2=9e-4):
    """Eq. 8 the plain way a user would write it: unfold, centre, one einsum; autograd backward.

    Memory ``O(B * N * L)`` instead of the literal reference's ``O(B * C_out * N * L)``, so it can
    be timed at benchmark sizes.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    b, _, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    patches = unfold_patches(x, (kh, kw), stride, padding, dilation, groups)  # (B, g, N, L)
    n = patches.shape[2]
    ys = w.reshape(groups, c_out // groups, n)  # (g, K, N)
    mu_x = patches.mean(2)  # (B, g, L)
    mu_y = ys.mean(2)  # (g, K)
    xc = patches - mu_x.unsqueeze(2)
    yc = ys - mu_y.unsqueeze(2)
    var_x = xc.square().sum(2) / (n - 1)  # (B, g, L)
    var_y = yc.square().sum(2) / (n - 1)  # (g, K)
    cov = torch.einsum("bgnl,gkn->bgkl", xc, yc) / (n - 1)  # (B, g, K, L)
    mx, vx = mu_x.unsqueeze(2), var_x.unsqueeze(2)
    my, vy = mu_y[None, :, :, None], var_y[None, :, :, None]
    out = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return out.reshape(b, c_out, h_out, w_out)
