"""The exact corner sums of ``corner_matmul`` as a Triton kernel, for CUDA devices.

Each program owns a tile of outputs (samples x output units) of one budget point and streams the
reduction axis K through it, one outer product per k: the four corner products, their min and
max, and the magnitude product are formed in registers and added to the tile's sums, so nothing
of size N x M x K ever reaches memory. Like the CPU kernel it is one pass where Rump's form with
the sign split is about a dozen GEMMs and element-wise passes, and it gives the exact range. The
sums run in k order, or, where K is long (a batch sum), per slice of K with the slices' sums added
afterwards; the caller's a-priori term covers any order.
"""
from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from pcert.runtime.constants import constant
from pcert.runtime.triton_support import multiprocessors, next_pow2

_TILE_ELEMENTS = 1024  # samples x outputs per program at most: 8 per thread of 4 warps, each with 3 sums
_MAX_BLOCK_M = 32
_MIN_BLOCK_N = 16
_MIN_SLICE = 256  # K per program at least, where K is split
_PROGRAMS_PER_SM = 8


@cache
def _kernel():
    """Compiled on first use, so that importing this module needs no Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def corner_kernel(xl, xh, wl, wh, bl, bh, terms, lo, hi, parts, N, M, K, x_step, w_step, b_step, k_per,
                      S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        p, split = tl.program_id(2) // S, tl.program_id(2) % S
        n_in, m_in = n < N, m < M
        x_at = p.to(tl.int64) * x_step + n.to(tl.int64) * K  # x [P|1, N, K], W [P|1, M, K]
        w_at = p.to(tl.int64) * w_step + m.to(tl.int64) * K
        s_lo = tl.full((BLOCK_N, BLOCK_M), 0.0, lo.dtype.element_ty)
        s_hi = tl.full((BLOCK_N, BLOCK_M), 0.0, lo.dtype.element_ty)
        s_mag = tl.full((BLOCK_N, BLOCK_M), 0.0, lo.dtype.element_ty)
        for k in range(split * k_per, tl.minimum(K, split * k_per + k_per)):  # one outer product per k
            a = tl.load(xl + x_at + k, mask=n_in, other=0.0)[:, None]
            b = tl.load(xh + x_at + k, mask=n_in, other=0.0)[:, None]
            c = tl.load(wl + w_at + k, mask=m_in, other=0.0)[None, :]
            d = tl.load(wh + w_at + k, mask=m_in, other=0.0)[None, :]
            ac, ad, bc, bd = a * c, a * d, b * c, b * d
            s_lo += tl.minimum(tl.minimum(ac, ad), tl.minimum(bc, bd))
            s_hi += tl.maximum(tl.maximum(ac, ad), tl.maximum(bc, bd))
            # NaN (from a NaN input) must reach the magnitude sum: a NaN corner may drop out of the
            # min / max above, the magnitude term then makes the output's sides infinite
            x_mag = tl.maximum(tl.abs(a), tl.abs(b), propagate_nan=tl.PropagateNan.ALL)
            w_mag = tl.maximum(tl.abs(c), tl.abs(d), propagate_nan=tl.PropagateNan.ALL)
            s_mag += x_mag * w_mag
        out_at = (p.to(tl.int64) * N + n.to(tl.int64)[:, None]) * M + m[None, :]
        out_mask = n_in[:, None] & m_in[None, :]
        if S > 1:  # the K-slice's three sums, [3, S, P, N, M]: added up and finished by the caller
            size = tl.num_programs(2).to(tl.int64) * N * M  # S * P * N * M
            at = split.to(tl.int64) * (size // S) + out_at
            tl.store(parts + at, s_lo, mask=out_mask)
            tl.store(parts + size + at, s_hi, mask=out_mask)
            tl.store(parts + 2 * size + at, s_mag, mask=out_mask)
        else:
            b_lo = tl.load(bl + p.to(tl.int64) * b_step + m, mask=m_in, other=0.0)
            b_hi = tl.load(bh + p.to(tl.int64) * b_step + m, mask=m_in, other=0.0)
            b_mag = tl.maximum(tl.abs(b_lo), tl.abs(b_hi), propagate_nan=tl.PropagateNan.ALL)
            err = (s_mag + b_mag[None, :]) * tl.load(terms) + tl.load(terms + 1)
            tl.store(lo + out_at, s_lo + b_lo[None, :] - err, mask=out_mask)
            tl.store(hi + out_at, s_hi + b_hi[None, :] + err, mask=out_mask)

    return corner_kernel


def corner_sums(xl: Tensor, xh: Tensor, wl: Tensor, wh: Tensor, bl: Tensor, bh: Tensor,
                points: int, scale: float, absolute: float) -> tuple[Tensor, Tensor]:
    """The corner sums of x [P|1, N, K] W^T [P|1, M, K] + b [P|1, M] minus / plus the a-priori term
    scale * sum_k max|x_k| max|W_k| (+ the bias's magnitude) + absolute, as [P, N, M] tensors
    (P = points).

    The two term factors travel as a tensor of the bounds' dtype: a Python float argument would
    reach the kernel as float32, rounding ``scale`` and flushing a float64 ``absolute`` to zero.
    """
    dtype, dev, p = torch.result_type(xl, wl), xl.device, points
    xl, xh, wl, wh, bl, bh = (t.to(dtype).contiguous() for t in (xl, xh, wl, wh, bl, bh))
    (_, n, k), m = xl.shape, wl.shape[1]
    lo = torch.empty(p, n, m, dtype=dtype, device=dev)
    hi = torch.empty_like(lo)
    terms = constant((scale, absolute), dtype, dev)  # uploaded once (no copy inside a captured graph)
    block_m = min(_MAX_BLOCK_M, next_pow2(m))
    block_n = _TILE_ELEMENTS // block_m
    sms = multiprocessors(dev)
    programs = lambda: -(-n // block_n) * -(-m // block_m) * p  # noqa: E731
    while block_n > _MIN_BLOCK_N and programs() < _PROGRAMS_PER_SM * sms:
        block_n //= 2  # smaller tiles where the outputs are few: every SM gets programs
    # a long reduction axis (a batch sum: K = batch) is split into slices, each summed by its own
    # programs; the slices' sums are then added in slice order (deterministic)
    splits = max(1, min(-(-_PROGRAMS_PER_SM * sms // programs()), k // _MIN_SLICE))
    k_per = -(-k // splits)
    splits = -(-k // k_per)
    parts = lo.new_empty(3, splits, p, n, m) if splits > 1 else lo
    step = lambda t, per: per if t.shape[0] > 1 else 0  # noqa: E731  a length-1 budget axis serves every point
    grid = (-(-n // block_n), -(-m // block_m), p * splits)
    _kernel()[grid](xl, xh, wl, wh, bl, bh, terms, lo, hi, parts, n, m, k, step(xl, n * k), step(wl, m * k),
                    step(bl, m), k_per, S=splits, BLOCK_N=block_n, BLOCK_M=block_m,
                    num_warps=max(1, min(4, block_n * block_m // 256)))
    if splits > 1:
        s_lo, s_hi, s_mag = parts.sum(1).unbind(0)
        err = (s_mag + torch.maximum(bl.abs(), bh.abs()).unsqueeze(1)) * terms[0] + terms[1]
        torch.sub(s_lo + bl.unsqueeze(1), err, out=lo)
        torch.add(s_hi + bh.unsqueeze(1), err, out=hi)
    return lo, hi
