"""The exact corner sums of ``corner_matmul`` as a Triton kernel, for CUDA devices.

Each program owns a tile of outputs (samples x output units) of one budget point and streams the
reduction axis K through it, one outer product per k: the four corner products, their min and
max, and the magnitude product are formed in registers and added to the tile's sums, so nothing
of size N x M x K ever reaches memory. Like the CPU kernel it is one pass where Rump's form with
the sign split is about a dozen GEMMs and element-wise passes, and it gives the exact range. The
sums run in k order; the caller's a-priori term covers any order.
"""
from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from pcert.runtime.constants import constant
from pcert.runtime.triton_support import next_pow2

_TILE_ELEMENTS = 2048  # samples x outputs per program: 16 per thread of 4 warps, each with 3 sums
_MAX_BLOCK_M = 32


@cache
def _kernel():
    """Compiled on first use, so that importing this module needs no Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def corner_kernel(xl, xh, wl, wh, bl, bh, terms, lo, hi, N, M, K, x_step, w_step, b_step,
                      BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        p = tl.program_id(2)
        n_in, m_in = n < N, m < M
        x_at = p.to(tl.int64) * x_step + n.to(tl.int64) * K  # x [P|1, N, K], W [P|1, M, K]
        w_at = p.to(tl.int64) * w_step + m.to(tl.int64) * K
        s_lo = tl.full((BLOCK_N, BLOCK_M), 0.0, lo.dtype.element_ty)
        s_hi = tl.full((BLOCK_N, BLOCK_M), 0.0, lo.dtype.element_ty)
        s_mag = tl.full((BLOCK_N, BLOCK_M), 0.0, lo.dtype.element_ty)
        for k in range(0, K):  # one outer product per k: every term's min and max stay in registers
            a = tl.load(xl + x_at + k, mask=n_in, other=0.0)[:, None]
            b = tl.load(xh + x_at + k, mask=n_in, other=0.0)[:, None]
            c = tl.load(wl + w_at + k, mask=m_in, other=0.0)[None, :]
            d = tl.load(wh + w_at + k, mask=m_in, other=0.0)[None, :]
            ac, ad, bc, bd = a * c, a * d, b * c, b * d
            s_lo += tl.minimum(tl.minimum(ac, ad), tl.minimum(bc, bd))
            s_hi += tl.maximum(tl.maximum(ac, ad), tl.maximum(bc, bd))
            # NaN (from a NaN or inf input) must reach the magnitude sum: a NaN corner may drop out of
            # the min / max above, the magnitude term then makes the output's sides infinite
            x_mag = tl.maximum(tl.abs(a), tl.abs(b), propagate_nan=tl.PropagateNan.ALL)
            w_mag = tl.maximum(tl.abs(c), tl.abs(d), propagate_nan=tl.PropagateNan.ALL)
            s_mag += x_mag * w_mag
        b_lo = tl.load(bl + p.to(tl.int64) * b_step + m, mask=m_in, other=0.0)
        b_hi = tl.load(bh + p.to(tl.int64) * b_step + m, mask=m_in, other=0.0)
        b_mag = tl.maximum(tl.abs(b_lo), tl.abs(b_hi), propagate_nan=tl.PropagateNan.ALL)
        err = (s_mag + b_mag[None, :]) * tl.load(terms) + tl.load(terms + 1)
        out_at = (p.to(tl.int64) * N + n.to(tl.int64)[:, None]) * M + m[None, :]
        out_mask = n_in[:, None] & m_in[None, :]
        tl.store(lo + out_at, s_lo + b_lo[None, :] - err, mask=out_mask)
        tl.store(hi + out_at, s_hi + b_hi[None, :] + err, mask=out_mask)

    return corner_kernel


def corner_sums(xl: Tensor, xh: Tensor, wl: Tensor, wh: Tensor, bl: Tensor, bh: Tensor,
                scale: float, absolute: float) -> tuple[Tensor, Tensor]:
    """The corner sums of x [P|1, N, K] W^T [P|1, M, K] + b [P|1, M] minus / plus the a-priori term
    scale * sum_k max|x_k| max|W_k| (+ the bias's magnitude) + absolute, as [P, N, M] tensors.

    The two term factors travel as a tensor of the bounds' dtype: a Python float argument would
    reach the kernel as float32, rounding ``scale`` and flushing a float64 ``absolute`` to zero.
    """
    dtype, dev = torch.result_type(xl, wl), xl.device
    p = max(xl.shape[0], wl.shape[0], bl.shape[0])
    xl, xh, wl, wh, bl, bh = (_one_if_broadcast(t).to(dtype).contiguous() for t in (xl, xh, wl, wh, bl, bh))
    (_, n, k), m = xl.shape, wl.shape[1]
    lo = torch.empty(p, n, m, dtype=dtype, device=dev)
    hi = torch.empty_like(lo)
    terms = constant((scale, absolute), dtype, dev)  # uploaded once (no copy inside a captured graph)
    block_m = min(_MAX_BLOCK_M, next_pow2(m))
    block_n = max(16, _TILE_ELEMENTS // block_m)
    step = lambda t, per: per if t.shape[0] > 1 else 0  # noqa: E731  a length-1 budget axis serves every point
    grid = (-(-n // block_n), -(-m // block_m), p)
    _kernel()[grid](xl, xh, wl, wh, bl, bh, terms, lo, hi, n, m, k, step(xl, n * k), step(wl, m * k), step(bl, m),
                    BLOCK_N=block_n, BLOCK_M=block_m)
    return lo, hi


def _one_if_broadcast(t: Tensor) -> Tensor:
    """A budget axis broadcast with stride 0 stays one slice (the kernel reads it for every point)."""
    return t[:1] if t.shape[0] > 1 and t.stride(0) == 0 else t
