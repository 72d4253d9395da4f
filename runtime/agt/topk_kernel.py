"""Fused per-coordinate top-k of rank-R per-sample products, on the CPU (numba).

The poisoning term of a linear layer needs, for every weight (o, j), the k largest of
d_i[o, j] = sum_r lhs[i, o, r] rhs[i, j, r] over the batch. Materialising d (batch x |W|) and
running torch.topk costs hundreds of times a plain SGD step; this kernel streams samples per
output row o in the order of a separable bound |d_i[o, j]| <= alpha_i[o] beta[j] and stops as soon
as no remaining sample can enter any top-k (thresholds only grow, alpha only shrinks). Skipped
samples are dominated by the k-th kept value, so the returned top-k sums bound the exact ones up
to the float32 rounding of the kept values, which the caller covers a priori.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from torch import Tensor

_INFLATE = 1.0 + 1e-6  # covers float32 rounding of alpha, beta and their product (u32 ~ 6e-8)
_FINITE_CAP = 1e36  # |d| stays far below float32 overflow, so no inf or NaN arises inside the kernel
BLOCK = 8  # outputs per task: one pass over a sample's rhs rows serves all of them


@numba.njit(nogil=True, cache=True, inline="always")
def _replace_smallest(best: np.ndarray, base: int, kmax: int, v: float) -> float:
    """Replace the smallest of best[base:base + kmax] by v; return the new smallest (the row's threshold)."""
    at = base
    for c in range(base + 1, base + kmax):
        if best[c] < best[at]:
            at = c
    best[at] = v
    low = best[base]
    for c in range(base + 1, base + kmax):
        low = min(low, best[c])
    return low


@numba.njit(nogil=True, cache=True, fastmath=True)  # no inf/NaN reach it (see outer_topk)
def _kernel(lhs, rhs_hi, rhs_lo, order, alpha, rest, beta_hi, beta_lo, kmax, block, out_hi, out_lo,
            first, last):  # pragma: no cover
    """Tasks first..last-1 of (p, block of outputs): a sample's rhs rows are loaded once per block."""
    p_n, o_n, b_n, r_n = lhs.shape
    q_n, _, _, j_n = rhs_hi.shape
    n_blocks = (o_n + block - 1) // block
    for task in range(first, last):
        p, blk = task // n_blocks, task % n_blocks
        o0 = blk * block
        ob = min(block, o_n - o0)
        q = p if q_n > 1 else 0
        best_hi = np.zeros(ob * j_n * kmax, np.float32)
        best_lo = np.zeros(ob * j_n * kmax, np.float32)
        th_hi = np.zeros(ob * j_n, np.float32)
        th_lo = np.zeros(ob * j_n, np.float32)
        active = np.ones(ob, np.bool_)
        v_hi = np.empty(j_n, np.float32)
        v_lo = np.empty(j_n, np.float32)
        for step in range(b_n):
            i = order[p, blk, step]
            if step % 8 == 0:  # retire outputs no remaining sample can improve
                n_active = 0
                for u in range(ob):
                    if active[u]:
                        a = rest[p, o0 + u, step]
                        for j in range(j_n):
                            if a * beta_hi[q, j] > th_hi[u * j_n + j] or a * beta_lo[q, j] > th_lo[u * j_n + j]:
                                break
                        else:
                            active[u] = False
                    n_active += active[u]
                if n_active == 0:
                    break
            for u in range(ob):
                if not active[u] or alpha[p, o0 + u, i] <= 0.0:
                    continue
                v_hi[:] = 0.0
                v_lo[:] = 0.0
                for r in range(r_n):
                    lr = lhs[p, o0 + u, i, r]
                    if lr != 0.0:
                        for j in range(j_n):
                            v_hi[j] += lr * rhs_hi[q, i, r, j]
                            v_lo[j] -= lr * rhs_lo[q, i, r, j]
                t0 = u * j_n
                for j0 in range(0, j_n, 16):  # branch-free test per 16 weights; inserts are rare
                    j1 = min(j0 + 16, j_n)
                    hits = 0
                    for j in range(j0, j1):
                        hits += (v_hi[j] > th_hi[t0 + j]) + (v_lo[j] > th_lo[t0 + j])
                    if hits == 0:
                        continue
                    for j in range(j0, j1):
                        if v_hi[j] > th_hi[t0 + j]:
                            th_hi[t0 + j] = _replace_smallest(best_hi, (t0 + j) * kmax, kmax, v_hi[j])
                        if v_lo[j] > th_lo[t0 + j]:
                            th_lo[t0 + j] = _replace_smallest(best_lo, (t0 + j) * kmax, kmax, v_lo[j])
        for u in range(ob):
            for j in range(j_n):
                for kk in range(kmax):
                    out_hi[p, kk, (o0 + u) * j_n + j] = best_hi[((u * j_n) + j) * kmax + kk]
                    out_lo[p, kk, (o0 + u) * j_n + j] = -best_lo[((u * j_n) + j) * kmax + kk]


def outer_topk(lhs: Tensor, rhs_hi: Tensor, rhs_lo: Tensor, keep: Tensor | None, kmax: int) -> tuple[Tensor, Tensor]:
    """kmax largest of max(d_hi, 0) and kmax smallest of min(d_lo, 0) per coordinate, in float32.

    lhs [P, b, O, R], rhs_* [Q, b, R, J] (Q = 1 or P), d_*[i, o, j] = sum_r lhs[i, o, r] rhs_*[i, r, j];
    keep [b] marks the rows the adversary may touch (None: all). Returns two [P, kmax, O * J]
    float32 tensors (unsorted), in the layout of ``RunningTopK.values``.
    """
    lhs, rhs_hi, rhs_lo = (t.to(torch.float32).cpu() for t in (lhs, rhs_hi, rhs_lo))
    p, _, o, r = lhs.shape
    j = rhs_hi.shape[3]
    mag_l = lhs.abs()
    beta_hi, beta_lo = (torch.maximum(t.amax((1, 2)), -t.amin((1, 2))) for t in (rhs_hi, rhs_lo))  # [Q, J]
    big = mag_l.amax() * torch.maximum(beta_hi.amax(), beta_lo.amax()) * r
    if not bool(torch.isfinite(big)) or float(big) > _FINITE_CAP:  # keeps inf/NaN out of the kernel
        inf = torch.full((p, kmax, o * j), math.inf)
        return inf, -inf
    alpha = mag_l.sum(-1).transpose(1, 2) * _INFLATE  # [P, O, b]
    if keep is not None:
        alpha = torch.where(keep.cpu().view(1, 1, -1), alpha, 0.0)
    n_blocks = -(-o // BLOCK)
    blocks = torch.nn.functional.pad(alpha, (0, 0, 0, n_blocks * BLOCK - o)).view(p, n_blocks, BLOCK, -1)
    order = torch.argsort(blocks.amax(2), dim=-1, descending=True, stable=True)  # [P, n_blocks, b]
    # rest[p, o, s]: largest alpha of output o among the samples at positions >= s of its block's order
    ordered = torch.gather(alpha, 2, order.repeat_interleave(BLOCK, 1)[:, :o])
    rest = ordered.flip(-1).cummax(-1).values.flip(-1).contiguous()
    out_hi = np.empty((p, kmax, o * j), np.float32)
    out_lo = np.empty((p, kmax, o * j), np.float32)
    args = (lhs.permute(0, 2, 1, 3).contiguous().numpy(), rhs_hi.contiguous().numpy(), rhs_lo.contiguous().numpy(),
            order.numpy(), alpha.contiguous().numpy(), rest.numpy(), (beta_hi * _INFLATE).numpy(),
            (beta_lo * _INFLATE).numpy(), kmax, BLOCK, out_hi, out_lo)
    # plain threads (the kernel releases the GIL) rather than numba's parallel layer, whose spinning
    # workers fight torch's OpenMP pool on small machines; tasks write disjoint outputs
    n_tasks = p * n_blocks
    workers = max(1, min(torch.get_num_threads(), n_tasks))
    cuts = [n_tasks * w // workers for w in range(workers + 1)]
    if workers == 1:
        _kernel(*args, 0, n_tasks)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda w: _kernel(*args, cuts[w], cuts[w + 1]), range(workers)))
    return torch.from_numpy(out_hi), torch.from_numpy(out_lo)
