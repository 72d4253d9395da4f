"""The per-coordinate top-k of ``topk_kernel`` as a fused Triton kernel, for CUDA devices.

Same quantity as ``topk_kernel.outer_topk``: for every weight (o, j) the k largest of
max(d_hi, 0) and the k smallest of min(d_lo, 0) over the batch, where d_i[o, j] is a sign-split
product over the sample's M input rows. Materialising d for chunks of the batch and running
torch.topk moves every per-sample value through memory several times (~80 plain SGD steps on an
H100 at batch 6000); here each program keeps a tile of weights' top-k in registers, as a sorted
list of k tiles, and streams its share of the samples through it: the values never leave the
chip. Each program takes a slice of the batch (so the grid fills the GPU); a second kernel merges
the slices' lists with the same insertion.

The list length k is unrolled in the kernel source, so one kernel is generated (and cached) per k.
The products are float32, like the CPU kernel's; the caller's a-priori term covers their rounding.
"""
from __future__ import annotations

import linecache
import math
from functools import cache

import torch
from torch import Tensor

from pcert.runtime.triton_support import multiprocessors, next_pow2

from .topk_kernel import _FINITE_CAP  # the same give-up threshold as on the CPU

_MIN_SAMPLES_PER_PROGRAM = 64  # fewer make the merge cost more than the kernel saves
_SPLIT_STEP = 32  # samples per program are a multiple of this
_MERGE_BLOCK = 512  # weights per merging program
_TILE = 256  # weights per program: one warp, 8 weights per thread, each with its two k-lists in registers
_WARPS = 1  # (an H100 sweep of 256-1024 tiles, 1-8 warps, 1-4 stages: 1.3-2.2x over 1024 unpipelined)
_STAGES = 3  # the next samples' rows and coefficients are loaded while the current one is inserted
_PROGRAMS_PER_SM = 16  # enough single-warp programs to hide the loads' latency

_SOURCE = '''
@triton.jit
def topk_kernel(coef, rows, out_hi, out_lo, B, O, J, n_j, q_step, PER_SPLIT: tl.constexpr, M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr, STAGES: tl.constexpr):
    tile, split, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o = (tile // n_j) * BLOCK_O + tl.arange(0, BLOCK_O)
    j = (tile % n_j) * BLOCK_J + tl.arange(0, BLOCK_J)
    o_in, j_in = o < O, j < J
{init}
    for s in tl.range(0, PER_SPLIT, num_stages=STAGES):
        i = split * PER_SPLIT + s
        o_i = o < tl.where(i < B, O, 0)  # past the batch: v = 0, the lists' floor
        j_i = j < tl.where(i < B, J, 0)
        c_row = coef + (p * B + i).to(tl.int64) * (4 * M) * O  # [P, B, side, M, sign, O]
        u_row = rows + (p * q_step + i).to(tl.int64) * M * J  # [Q, B, M, J]
        v_hi = tl.full((BLOCK_O, BLOCK_J), 0.0, tl.float32)
        v_lo = tl.full((BLOCK_O, BLOCK_J), 0.0, tl.float32)
        for m in tl.static_range(M):
            u = tl.load(u_row + m * J + j, mask=j_i, other=0.0)
            u_pos, u_neg = tl.maximum(u, 0.0)[None, :], tl.minimum(u, 0.0)[None, :]
            hp = tl.load(c_row + (2 * m) * O + o, mask=o_i, other=0.0)[:, None]
            hn = tl.load(c_row + (2 * m + 1) * O + o, mask=o_i, other=0.0)[:, None]
            lp = tl.load(c_row + (2 * M + 2 * m) * O + o, mask=o_i, other=0.0)[:, None]
            ln = tl.load(c_row + (2 * M + 2 * m + 1) * O + o, mask=o_i, other=0.0)[:, None]
            v_hi += hp * u_pos + hn * u_neg
            v_lo -= lp * u_pos + ln * u_neg
{insert}
    at = o[:, None] * J + j[None, :]
    keep = o_in[:, None] & j_in[None, :]
    base = (p * tl.num_programs(1) + split).to(tl.int64) * {k} * O * J
{store}


@triton.jit
def merge_kernel(src_hi, src_lo, out_hi, out_lo, F, SK: tl.constexpr, BLOCK: tl.constexpr):
    # the S slices' lists [P, S * k, F] -> [P, k, F]: the same insertion over S * k candidates
    f = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    p = tl.program_id(1)
    f_in = f < F
{init_merge}
    for c in range(SK):
        at = (p * SK + c).to(tl.int64) * F + f
        v_hi = tl.load(src_hi + at, mask=f_in, other=0.0)
        v_lo = -tl.load(src_lo + at, mask=f_in, other=0.0)
{insert}
    at = f
    keep = f_in
    base = p.to(tl.int64) * {k} * F
{store_merge}
'''


@cache
def _kernel(k: int):
    """The kernel for top-k lists of length k: the sorted list is k register tiles, unrolled.

    Inserting v keeps each list sorted (descending) and drops its last value:
    h_r, v = max(h_r, v), min(h_r, v) for r = 0..k-1 (branch-free, 2 ops per level).
    """
    import triton
    import triton.language as tl
    ind = " " * 4
    init = "\n".join(f"{ind}h{r} = tl.full((BLOCK_O, BLOCK_J), 0.0, tl.float32)\n"
                     f"{ind}l{r} = tl.full((BLOCK_O, BLOCK_J), 0.0, tl.float32)" for r in range(k))
    insert = "\n".join(f"{ind * 2}h{r}, v_hi = tl.maximum(h{r}, v_hi), tl.minimum(h{r}, v_hi)\n"
                       f"{ind * 2}l{r}, v_lo = tl.maximum(l{r}, v_lo), tl.minimum(l{r}, v_lo)" for r in range(k))
    store = "\n".join(f"{ind}tl.store(out_hi + base + {r} * O * J + at, h{r}, mask=keep)\n"
                      f"{ind}tl.store(out_lo + base + {r} * O * J + at, -l{r}, mask=keep)" for r in range(k))
    init_merge = init.replace("(BLOCK_O, BLOCK_J)", "(BLOCK,)")
    store_merge = store.replace("O * J", "F")
    source = _SOURCE.format(init=init, insert=insert, store=store, k=k, init_merge=init_merge, store_merge=store_merge)
    filename = f"<pcert-topk-k{k}>"  # Triton reads the kernel's source back through linecache
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = {"triton": triton, "tl": tl}
    exec(compile(source, filename, "exec"), scope)  # noqa: S102  generated above, no user input
    return scope["topk_kernel"], scope["merge_kernel"]


def outer_topk_triton(coef_hi: list[tuple[Tensor, Tensor]], coef_lo: list[tuple[Tensor, Tensor]],
                      rows: list[Tensor], keep: Tensor | None, kmax: int) -> tuple[Tensor, Tensor]:
    """``topk_kernel.outer_topk`` on the tensors' device: two [P, kmax, O * J] float32 tensors."""
    (p, b, o), m, j = coef_hi[0][0].shape, len(rows), rows[0].shape[2]
    dev = rows[0].device
    coef = torch.empty(p, b, 2, m, 2, o, dtype=torch.float32, device=dev)  # the kernel's layout, written once
    for side, coefs in enumerate((coef_hi, coef_lo)):
        for r, pair in enumerate(coefs):
            for sign, c in enumerate(pair):
                coef[:, :, side, r, sign].copy_(c)
    if keep is not None:  # an untouchable row contributes 0, the floor every list starts from
        coef.mul_(keep.view(1, -1, 1, 1, 1, 1))
    rows_t = torch.stack([u.to(torch.float32) for u in rows], 2).contiguous()  # [Q, b, M, J]
    block_j = min(64, next_pow2(j))
    block_o = min(max(1, _TILE // block_j), next_pow2(o))
    n_j = -(-j // block_j)
    tiles = -(-o // block_o) * n_j
    sms = multiprocessors(dev)
    splits = max(1, min(-(-_PROGRAMS_PER_SM * sms // (tiles * p)), b // _MIN_SAMPLES_PER_PROGRAM))
    per_split = -(-b // (splits * _SPLIT_STEP)) * _SPLIT_STEP  # a compile-time constant: few distinct values
    splits = -(-b // per_split)
    out_hi = torch.empty(p, splits, kmax, o * j, dtype=torch.float32, device=dev)
    out_lo = torch.empty_like(out_hi)
    kernel, merge = _kernel(kmax)
    kernel[(tiles, splits, p)](coef, rows_t, out_hi, out_lo, b, o, j, n_j, b if rows_t.shape[0] > 1 else 0,
                               PER_SPLIT=per_split, M=m, BLOCK_O=block_o, BLOCK_J=block_j, STAGES=_STAGES,
                               num_warps=_WARPS)
    top_hi, top_lo = out_hi[:, 0], out_lo[:, 0]
    if splits > 1:
        top_hi, top_lo = torch.empty_like(top_hi), torch.empty_like(top_lo)
        merge[(-(-o * j // _MERGE_BLOCK), p)](out_hi, out_lo, top_hi, top_lo, o * j, SK=splits * kmax,
                                              BLOCK=_MERGE_BLOCK)
    # a non-finite or huge factor gives up (+-inf), tested on the device: no host sync; the kernel's
    # values are then discarded, whatever inf or NaN did inside it
    big = coef.abs().amax() * rows_t.abs().amax() * m  # NaN if any NaN
    sound = big <= _FINITE_CAP
    return torch.where(sound, top_hi, math.inf), torch.where(sound, top_lo, -math.inf)
