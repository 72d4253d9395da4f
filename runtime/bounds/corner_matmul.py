"""Exact interval products x @ W^T + b when both x and W are intervals (numba on the CPU, Triton on CUDA).

The range of sum_k x_k W_k over independent intervals is the sum of the terms' ranges, and each
term's range is the min / max of its four corner products. Summing those is the exact range,
so it is at least as tight as Rump's midpoint-radius form intersected with the sign-split
products (``interval.linear_bounds``' fallback), and also faster: one pass over x that never
forms the [N, 4K] split or the midpoint, radius and magnitude products, each an [N, M] tensor
with its own element-wise passes. The kernels reduce along K (the contiguous axis of both
factors) and may reassociate that sum, which the a-priori term covers. CPU and CUDA thus give
the same bounds up to that term.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from pcert.runtime import triton_support
from pcert.runtime.host_threads import HostThreads, host_array

from . import corner_triton  # imports Triton only when its kernel is first built
from .interval import Bounds, gamma, outward, smallest_normal


def applies(x_lo: Tensor, w_lo: Tensor) -> bool:
    """The kernels' case: x [P|1, N, K] and W [P|1, M, K] in float32 or float64, on the CPU or on
    CUDA where Triton is installed."""
    device = x_lo.device.type
    return (x_lo.dim() == 3 and w_lo.dim() == 3 and x_lo.dtype in (torch.float32, torch.float64)
            and (device == "cpu" or (device == "cuda" and triton_support.available())))


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _corner_sums(xl, xh, wl, wh, wm, bl, bh, bm, scale, absolute, lo, hi, i0, i1):  # pragma: no cover
    """lo/hi [P, N, M] for samples i0..i1-1: the corner sums minus / plus the a-priori term
    scale * sum_k max|x_k| max|W_k| + absolute (wm = max|W| per entry, bm the bias's).

    An infinite factor makes the magnitude sum inf (or NaN, inf * 0), so that output's bounds become
    infinite or NaN (which the caller turns into the infinite side) whatever its corners gave: a NaN
    corner (inf * 0) drops out of the selects, but can never make a bound look tight.
    """
    p_n, _, m_n = lo.shape
    k_n = xl.shape[2]
    for p in range(p_n):
        px = p if xl.shape[0] > 1 else 0
        pw = p if wl.shape[0] > 1 else 0
        pb = p if bl.shape[0] > 1 else 0
        for i in range(i0, i1):
            l = xl[px, i]
            h = xh[px, i]
            for j in range(m_n):
                r_l = wl[pw, j]
                r_h = wh[pw, j]
                r_m = wm[pw, j]
                s_lo = bl[pb, j]
                s_hi = bh[pb, j]
                s_m = bm[pb, j]
                for k in range(k_n):
                    c1 = l[k] * r_l[k]
                    c2 = l[k] * r_h[k]
                    c3 = h[k] * r_l[k]
                    c4 = h[k] * r_h[k]
                    a = c1 if c1 < c2 else c2
                    b = c3 if c3 < c4 else c4
                    s_lo += a if a < b else b
                    a = c1 if c1 > c2 else c2
                    b = c3 if c3 > c4 else c4
                    s_hi += a if a > b else b
                    s_m += max(abs(l[k]), abs(h[k])) * r_m[k]
                e = s_m * scale + absolute
                lo[p, i, j] = s_lo - e
                hi[p, i, j] = s_hi + e


def corner_linear_bounds(x_lo: Tensor, x_hi: Tensor, w_lo: Tensor, w_hi: Tensor,
                         b_lo: Tensor | None, b_hi: Tensor | None) -> Bounds:
    """Bounds of x @ W^T + b, x [P|1, N, K] and W [P|1, M, K] both intervals, b [P|1, M] (see ``applies``).

    Rounding: the computed sum of K + 1 rounded terms (the bias is one) errs by at most
    gamma_{K+1} sum_k max|x_k| max|W_k| in any order, and so does any other evaluation of the
    product in the covered dtype (``interval.covering``); the magnitude sum and the term itself
    round too, hence 2 gamma_{K+3} / (1 - gamma_{K+3})^2 (and (K + 4) tiny for underflow). The
    result's own rounding is covered by ``outward``'s ulp.
    """
    dtype = torch.result_type(x_lo, w_lo)
    k = x_lo.shape[-1]
    g = gamma(k + 3, dtype)
    scale = 2.0 * g / (1.0 - g) ** 2
    absolute = (k + 4) * smallest_normal(dtype)
    m = w_lo.shape[1]
    if b_lo is None:
        b_lo = b_hi = w_lo.new_zeros(1, m, dtype=dtype)
    b_lo, b_hi = b_lo.reshape(-1, m), b_hi.reshape(-1, m)
    points = max(x_lo.shape[0], w_lo.shape[0], b_lo.shape[0])
    corner_sums = host_corner_sums if x_lo.device.type == "cpu" else corner_triton.corner_sums
    pairs = (_aligned(x_lo, x_hi), _aligned(w_lo, w_hi), _aligned(b_lo, b_hi))
    return outward(*corner_sums(*(t for pair in pairs for t in pair), points, scale, absolute))


def _aligned(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Both ends with one shape and a budget axis the kernels index alike: of length 1 where both
    ends are broadcast along it (stride 0; the kernels read a length-1 axis for every point), in
    memory where only one is."""
    lo, hi = torch.broadcast_tensors(lo, hi)
    flat = [t.shape[0] > 1 and t.stride(0) == 0 for t in (lo, hi)]
    if flat[0] and flat[1]:
        return lo[:1], hi[:1]
    if flat[0] or flat[1]:
        return lo.contiguous(), hi.contiguous()
    return lo, hi


def host_corner_sums(x_lo: Tensor, x_hi: Tensor, w_lo: Tensor, w_hi: Tensor, b_lo: Tensor, b_hi: Tensor,
                     points: int, scale: float, absolute: float) -> tuple[Tensor, Tensor]:
    """The corner sums minus / plus the a-priori term, [points, N, M], by the numba kernel on host threads."""
    dtype = torch.result_type(x_lo, w_lo)
    xl, xh, wl, wh, bl, bh = (host_array(t, dtype) for t in (x_lo, x_hi, w_lo, w_hi, b_lo, b_hi))
    p = points
    wm, bm = np.maximum(np.abs(wl), np.abs(wh)), np.maximum(np.abs(bl), np.abs(bh))
    lo = np.empty((p, xl.shape[1], wl.shape[1]), wl.dtype)
    hi = np.empty_like(lo)
    with HostThreads() as threads:
        threads.run(_corner_sums, xl.shape[1], xl, xh, wl, wh, wm, bl, bh, bm, scale, absolute, lo, hi)
    return torch.from_numpy(lo), torch.from_numpy(hi)
