"""Fused per-coordinate top-k of per-sample sign-split products, on the CPU (numba).

The poisoning term of a linear layer needs, for every weight (o, j), the k largest of
d_i[o, j] = sum_m c_i[o, m, +] max(u_i[m, j], 0) + c_i[o, m, -] min(u_i[m, j], 0) over the batch,
for an upper and a lower coefficient set c (u_i: the M distinct input rows of sample i, e.g. the
clean x and the poisoned x_lo, x_hi; c: gradient-factor bounds, see descent._sign_split_coefs).
Materialising d (batch x |W|) and running torch.topk costs hundreds of times a plain SGD step;
this kernel reads each sample's M input rows once per block of outputs, selects each coefficient
by the input's sign, keeps a sorted top-k per weight, and streams samples per output block in the
order of a separable bound |d_i[o, j]| <= alpha_i[o] beta[j], stopping as soon as no remaining
sample can enter any top-k (thresholds only grow, alpha only shrinks). Skipped samples are dominated by the k-th kept value,
so the returned top-k sums bound the exact ones up to the float32 rounding of the kept values,
which the caller covers a priori. Layers with short input rows run transposed (``_transposed``).
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
BLOCK = 8  # outputs per task: one pass over a sample's input rows serves all of them


@numba.njit(nogil=True, cache=True, inline="always")
def _insert(best: np.ndarray, base: int, kmax: int, v: float) -> float:
    """Insert v into the descending best[base:base + kmax], dropping the last; return the new last (the threshold).

    Branch-free: slot c takes max(best[c], min(best[c - 1], v)), which shifts the tail down past v.
    """
    for c in range(base + kmax - 1, base, -1):
        best[c] = max(best[c], min(best[c - 1], v))
    best[base] = max(best[base], v)
    return best[base + kmax - 1]


@numba.njit(nogil=True, cache=True)
def _alpha(coef: np.ndarray) -> np.ndarray:  # pragma: no cover
    """alpha[p, o, i] = sum_m max |c[p, o, i, side, m, sign]|, so |d_i[o, j]| <= alpha * max_m |u_m[j]|
    (one of max(u, 0), min(u, 0) is zero); inf where a coefficient is inf or NaN (the caller gives up)."""
    p_n, o_n, b_n, _, m_n, _ = coef.shape
    out = np.zeros((p_n, o_n, b_n), np.float32)
    for p in range(p_n):
        for o in range(o_n):
            for i in range(b_n):
                a = np.float32(0.0)
                for m in range(m_n):
                    c0, c1 = abs(coef[p, o, i, 0, m, 0]), abs(coef[p, o, i, 0, m, 1])
                    c2, c3 = abs(coef[p, o, i, 1, m, 0]), abs(coef[p, o, i, 1, m, 1])
                    if c0 + c1 + c2 + c3 < np.inf:
                        a += max(max(c0, c1), max(c2, c3))
                    else:
                        a = np.float32(np.inf)
                out[p, o, i] = a
    return out


@numba.njit(nogil=True, cache=True, fastmath=True)  # no inf/NaN reach it (see outer_topk)
def _kernel(coef, rows, order, alpha, rest, beta, kmax, block, out_hi, out_lo, first, last):  # pragma: no cover
    """Tasks first..last-1 of (p, block of outputs); coef [P, O, b, 2 (hi, lo), M, 2 (+, -)], rows [Q, b, M, J]."""
    p_n, o_n, b_n, _, m_n, _ = coef.shape
    q_n, _, _, j_n = rows.shape
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
                            if a * beta[q, j] > th_hi[u * j_n + j] or a * beta[q, j] > th_lo[u * j_n + j]:
                                break
                        else:
                            active[u] = False
                    n_active += active[u]
                if n_active == 0:
                    break
            for u in range(ob):
                if not active[u] or alpha[p, o0 + u, i] <= 0.0:
                    continue
                for m in range(m_n):
                    hp, hn = coef[p, o0 + u, i, 0, m, 0], coef[p, o0 + u, i, 0, m, 1]
                    lp, ln = coef[p, o0 + u, i, 1, m, 0], coef[p, o0 + u, i, 1, m, 1]
                    if m == 0:  # the first row writes, the others accumulate (one of max(x, 0),
                        for j in range(j_n):  # min(x, 0) is zero: select the coefficient by x's sign)
                            x = rows[q, i, 0, j]
                            up = x > 0.0
                            v_hi[j] = (hp if up else hn) * x
                            v_lo[j] = -((lp if up else ln) * x)
                    elif hp != 0.0 or hn != 0.0 or lp != 0.0 or ln != 0.0:
                        for j in range(j_n):
                            x = rows[q, i, m, j]
                            up = x > 0.0
                            v_hi[j] += (hp if up else hn) * x
                            v_lo[j] -= (lp if up else ln) * x
                t0 = u * j_n
                if kmax == 1:  # the top-1 is a running maximum: branch-free
                    for j in range(j_n):
                        th_hi[t0 + j] = max(th_hi[t0 + j], v_hi[j])
                        th_lo[t0 + j] = max(th_lo[t0 + j], v_lo[j])
                    continue
                for j in range(j_n):  # inserts are rare after the first samples: predictable branches
                    if v_hi[j] > th_hi[t0 + j]:
                        th_hi[t0 + j] = _insert(best_hi, (t0 + j) * kmax, kmax, v_hi[j])
                    if v_lo[j] > th_lo[t0 + j]:
                        th_lo[t0 + j] = _insert(best_lo, (t0 + j) * kmax, kmax, v_lo[j])
        if kmax == 1:
            best_hi[:] = th_hi
            best_lo[:] = th_lo
        for u in range(ob):
            for j in range(j_n):
                for kk in range(kmax):
                    out_hi[p, kk, (o0 + u) * j_n + j] = best_hi[((u * j_n) + j) * kmax + kk]
                    out_lo[p, kk, (o0 + u) * j_n + j] = -best_lo[((u * j_n) + j) * kmax + kk]


def outer_topk(coef_hi: list[tuple[Tensor, Tensor]], coef_lo: list[tuple[Tensor, Tensor]], rows: list[Tensor],
               keep: Tensor | None, kmax: int) -> tuple[Tensor, Tensor]:
    """kmax largest of max(d_hi, 0) and kmax smallest of min(d_lo, 0) per coordinate, in float32.

    rows: M tensors u_m [Q, b, J] (Q = 1 or P); coef_*: per row the coefficients of max(u_m, 0) and
    min(u_m, 0), each [P, b, O]; keep [b] marks the rows the adversary may touch (None: all).
    Returns two [P, kmax, O * J] float32 tensors (unsorted), in the layout of ``RunningTopK.values``.
    """
    (p, b, o), m, j = coef_hi[0][0].shape, len(rows), rows[0].shape[2]
    if o > 4 * j:  # short input rows (e.g. a 2-feature input layer): stream the long axis
        return _transposed(coef_hi, coef_lo, rows, keep, kmax)
    coef = torch.empty(p, o, b, 2, m, 2, dtype=torch.float32)  # the kernel's layout, written once
    for side, coefs in enumerate((coef_hi, coef_lo)):
        for r, pair in enumerate(coefs):
            for sign, c in enumerate(pair):
                coef[:, :, :, side, r, sign].copy_(c.transpose(1, 2))
    rows = torch.stack([u.to(torch.float32).cpu() for u in rows], 2)  # [Q, b, M, J]
    beta = torch.maximum(rows.amax((1, 2)), -rows.amin((1, 2)))  # [Q, J]
    alpha = torch.from_numpy(_alpha(coef.numpy()))  # [P, O, b]
    big = alpha.amax() * beta.amax()
    if not bool(torch.isfinite(big)) or float(big) > _FINITE_CAP:  # keeps inf/NaN out of the kernel
        inf = torch.full((p, kmax, o * j), math.inf)
        return inf, -inf
    alpha = alpha * _INFLATE
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
    args = (coef.numpy(), rows.numpy(), order.numpy(),
            alpha.contiguous().numpy(), rest.numpy(), (beta * _INFLATE).numpy(), kmax, BLOCK, out_hi, out_lo)
    # plain threads (the kernel releases the GIL) rather than numba's parallel layer, whose spinning
    # workers fight torch's OpenMP pool on small machines; tasks write disjoint outputs
    n_tasks = p * n_blocks
    workers = max(1, min(torch.get_num_threads(), n_tasks))
    cuts = [n_tasks * w // workers for w in range(workers + 1)]
    with torch.profiler.record_function("pcert::topk_kernel"):  # visible in bench/profile_agt.py
        if workers == 1:
            _kernel(*args, 0, n_tasks)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda w: _kernel(*args, cuts[w], cuts[w + 1]), range(workers)))
    return torch.from_numpy(out_hi), torch.from_numpy(out_lo)


def _transposed(coef_hi: list[tuple[Tensor, Tensor]], coef_lo: list[tuple[Tensor, Tensor]], rows: list[Tensor],
                keep: Tensor | None, kmax: int) -> tuple[Tensor, Tensor]:
    """The same top-k with inputs and outputs swapped: the rows become the hi and lo coefficient
    vectors over the outputs, the coefficients the signed inputs max(u, 0) and min(u, 0). A term
    c_s * u_s is the same float32 product either way; the kernel's vectors are then the long axis."""
    (p, b, o), j = coef_hi[0][0].shape, rows[0].shape[2]
    rows_t = [c for coefs in (coef_hi, coef_lo) for pair in coefs for c in pair]  # 4M rows [P, b, O]
    signed = [t.expand(p, b, j) for u in rows for t in (u.clamp(min=0), u.clamp(max=0))]  # [P, b, J]
    zero = torch.zeros_like(signed[0])
    # each new row's coefficient is the same whatever its sign: u_s on its own side, 0 on the other
    hi = [(s, s) for s in signed] + [(zero, zero)] * len(signed)
    lo = [(zero, zero)] * len(signed) + [(s, s) for s in signed]
    top_hi, top_lo = outer_topk(hi, lo, rows_t, keep, kmax)
    back = lambda t: t.view(p, kmax, j, o).transpose(2, 3).reshape(p, kmax, o * j)  # noqa: E731
    return back(top_hi), back(top_lo)
