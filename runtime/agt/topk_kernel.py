"""Fused per-coordinate top-k of per-sample sign-split products, on the CPU (numba).

The poisoning term of a linear layer needs, for every weight (o, j), the k largest of
d_i[o, j] = sum_m c_i[o, m, +] max(u_i[m, j], 0) + c_i[o, m, -] min(u_i[m, j], 0) over the batch,
for an upper and a lower coefficient set c (u_i: the M distinct input rows of sample i, e.g. the
clean x and the poisoned x_lo, x_hi; c: gradient-factor bounds, see descent._sign_split_coefs).
Materialising d (batch x |W|) and running torch.topk costs hundreds of times a plain SGD step;
this kernel keeps a sorted top-k per weight and never forms a value that cannot enter it: a
per-sample bound |d_i[o, j]| <= a_i[o] |r_i[j]| + e_i[o] (r: one input row; ``_sample_bounds``)
costs one multiply-add per weight and is tested against the smaller threshold first, so only a
few dozen of thousands of samples per weight are evaluated in full. Thresholds are seeded by
each output's samples of largest bound, evaluated densely; the rest stream in memory order,
tested per tile of inputs and then per input. Small layers are evaluated densely throughout.
A skipped value is at most the threshold it was tested against, even as computed in float32, so
the result equals the full evaluation; the caller covers the float32 rounding of the kept values
a priori. Layers with short input rows run transposed (``_transposed``).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from torch import Tensor

_FINITE_CAP = 1e36  # |d| stays far below float32 overflow, so no inf or NaN arises inside the kernel
BLOCK = 8  # outputs per task
_SEEDS = 16  # samples per output evaluated densely first, per unit of k
_DENSE_ELEMENTS = 1 << 24  # up to this many per-sample values, all are evaluated densely (no filter)
_TILE = 64  # inputs per tile of the coarse test (a multiple of 8)


@numba.njit(nogil=True, cache=True)
def _sample_bounds(coef: np.ndarray, rows: np.ndarray) -> tuple:  # pragma: no cover
    """Per-sample factors of the pruning bound |d_i[o, j]| <= a[p, o, i] |r_i[j]| + e[p, o, i].

    r = the last input row, D_i = max_{m, j} |u_m[i, j] - r[i, j]|. With s_m the sign of u_m,
    d = sum_m c_m^{s_m} u_m. If all s_m agree (zeros may take either sign), d = (sum_m c_m^s) r +
    sum_m c_m^s (u_m - r), so |d| <= A |r| + C D with A = max_s |sum_m c_m^s| and
    C = sum_m max_s |c_m^s|; if they differ, r lies within D of 0 and |d| <= C (|r| + D) <= 2 C D.
    So a = A and e = 2 C D, both sides (hi, lo) at once. A clean row shared with the poisoned
    factors (labels poisoned only) has D = 0 and a = the coefficient difference: the bound sees the
    cancellation between clean and poisoned gradients that a sum of magnitudes would not.
    Evaluated in float64, then raised by 1e-5 C (covering the float32 evaluation of the key and of
    d itself, so a skipped value could not have entered the top-k even as computed); inf where a
    coefficient is inf or NaN (the caller gives up). coef [P, b, O, 2 (hi, lo), M, 2 (+, -)].
    Also returns max |r_i[j]| over each tile of ``_TILE`` inputs, [Q, b, tiles].
    """
    p_n, b_n, o_n, _, m_n, _ = coef.shape
    q_n, _, _, j_n = rows.shape
    dev = np.zeros((q_n, b_n), np.float64)
    r_max = np.zeros((q_n, b_n, (j_n + _TILE - 1) // _TILE), np.float32)
    for q in range(q_n):
        for i in range(b_n):
            d = 0.0
            for m in range(m_n - 1):
                for j in range(j_n):
                    v = abs(np.float64(rows[q, i, m, j]) - np.float64(rows[q, i, m_n - 1, j]))
                    d = max(d, v if v < np.inf else np.inf)  # NaN -> inf: the caller gives up
            dev[q, i] = d
            for j in range(j_n):
                v = abs(rows[q, i, m_n - 1, j])
                r_max[q, i, j // _TILE] = max(r_max[q, i, j // _TILE], v if v < np.inf else np.inf)
    a_out = np.zeros((p_n, o_n, b_n), np.float32)
    e_out = np.zeros((p_n, o_n, b_n), np.float32)
    for p in range(p_n):
        q = p if q_n > 1 else 0
        for i in range(b_n):
            for o in range(o_n):
                a = 0.0
                c = 0.0
                total = 0.0  # inf or NaN if any coefficient is
                for side in range(2):
                    sp = 0.0
                    sn = 0.0
                    cs = 0.0
                    for m in range(m_n):
                        cp, cn = np.float64(coef[p, i, o, side, m, 0]), np.float64(coef[p, i, o, side, m, 1])
                        sp += cp
                        sn += cn
                        cs += max(abs(cp), abs(cn))
                        total += abs(cp) + abs(cn)
                    a = max(a, max(abs(sp), abs(sn)))
                    c = max(c, cs)
                if not total < np.inf:
                    a = c = np.inf
                a_out[p, o, i] = (a + 1e-5 * c) * (1.0 + 1e-5)
                e_out[p, o, i] = 2.0 * c * dev[q, i] * (1.0 + 1e-5)
    return a_out, e_out, r_max


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _values(coef, rows, p, q, i, o, v_hi, v_lo):  # pragma: no cover
    """d_i[o, :] for both sides into v_hi, v_lo (v_lo negated: both are kept as largest values)."""
    m_n, j_n = rows.shape[2], rows.shape[3]
    for m in range(m_n):
        hp, hn = coef[p, i, o, 0, m, 0], coef[p, i, o, 0, m, 1]
        lp, ln = coef[p, i, o, 1, m, 0], coef[p, i, o, 1, m, 1]
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


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _value(coef, rows, p, q, i, o, j):  # pragma: no cover
    """d_i[o, j] for both sides (lo negated), by the same products as ``_values``."""
    hi = np.float32(0.0)
    lo = np.float32(0.0)
    for m in range(rows.shape[2]):
        x = rows[q, i, m, j]
        up = x > 0.0
        hi += (coef[p, i, o, 0, m, 0] if up else coef[p, i, o, 0, m, 1]) * x
        lo -= (coef[p, i, o, 1, m, 0] if up else coef[p, i, o, 1, m, 1]) * x
    return hi, lo


@numba.njit(nogil=True, cache=True, inline="always")
def _insert(best: np.ndarray, v: float) -> float:
    """Insert v into the descending best [kmax], dropping the last; return the new last (the threshold).

    Branch-free: slot c takes max(best[c], min(best[c - 1], v)), which shifts the tail down past v.
    """
    for c in range(best.shape[0] - 1, 0, -1):
        best[c] = max(best[c], min(best[c - 1], v))
    best[0] = max(best[0], v)
    return best[best.shape[0] - 1]


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _merge(src, dst, v):  # pragma: no cover
    """dst = src [kmax, J] (descending per column) with v [J] inserted, branch-free and vectorised.

    Slot c takes max(src[c], min(src[c - 1], v)). Writing to another buffer keeps every store
    unconditional (in place, the compiler turns the max into masked stores, four times slower).
    """
    for j in range(v.shape[0]):
        x, y = src[0, j], v[j]
        dst[0, j] = x if x > y else y
    for c in range(1, src.shape[0]):
        for j in range(v.shape[0]):
            x, y = src[c - 1, j], v[j]
            m = x if x < y else y
            z = src[c, j]
            dst[c, j] = z if z > m else m


@numba.njit(nogil=True, cache=True, fastmath=True)  # no inf/NaN reach it (see outer_topk)
def _kernel(coef, rows, seeds, a_fac, e_fac, r_max, kmax, block, out_hi, out_lo, first, last):  # pragma: no cover
    """Tasks first..last-1 of (p, block of outputs); coef [P, b, O, 2, M, 2], rows [Q, b, M, J].

    Seeding: each output's samples of largest bound (``seeds``) are evaluated for all inputs and
    merged into the top-k lists branch-free, which lifts the thresholds near their final values.
    Then every other (sample, output) pair, in memory order, tests the bound a |r_j| + e against
    the smaller of the two thresholds for all inputs (one multiply-add and compare per weight,
    vectorised, into byte flags read 8 at a time); only inputs whose bound exceeds it are
    evaluated and inserted.
    """
    p_n, b_n, o_n = coef.shape[0], coef.shape[1], coef.shape[2]
    q_n, _, m_n, j_n = rows.shape
    n_blocks = (o_n + block - 1) // block
    for task in range(first, last):
        p, blk = task // n_blocks, task % n_blocks
        o0 = blk * block
        ob = min(block, o_n - o0)
        q = p if q_n > 1 else 0
        best_hi = np.zeros((ob, j_n, kmax), np.float32)  # a weight's list in one cache line (inserts)
        best_lo = np.zeros((ob, j_n, kmax), np.float32)
        seed_hi = np.zeros((2, kmax, j_n), np.float32)  # while seeding: slot-major (vectorised merges)
        seed_lo = np.zeros((2, kmax, j_n), np.float32)
        th_hi = np.zeros((ob, j_n), np.float32)
        th_lo = np.zeros((ob, j_n), np.float32)
        th = np.zeros((ob, j_n), np.float32)  # min(th_hi, th_lo): what the bound must exceed
        done = np.zeros((ob, b_n), np.bool_)
        v_hi = np.empty(j_n, np.float32)
        v_lo = np.empty(j_n, np.float32)
        flags = np.zeros(_TILE, np.uint8)
        words = flags.view(np.uint64)
        for u in range(ob):
            seed_hi[0, :, :] = 0.0
            seed_lo[0, :, :] = 0.0
            n_merged = 0
            for s in range(seeds.shape[2]):
                i = seeds[p, o0 + u, s]
                if a_fac[p, o0 + u, i] <= 0.0 and e_fac[p, o0 + u, i] <= 0.0:
                    continue  # zero (or trusted: masked) samples are never evaluated
                done[u, i] = True
                _values(coef, rows, p, q, i, o0 + u, v_hi, v_lo)
                src = n_merged % 2
                _merge(seed_hi[src], seed_hi[1 - src], v_hi)
                _merge(seed_lo[src], seed_lo[1 - src], v_lo)
                n_merged += 1
            last = n_merged % 2
            for j in range(j_n):
                for c in range(kmax):
                    best_hi[u, j, c] = seed_hi[last, c, j]
                    best_lo[u, j, c] = seed_lo[last, c, j]
                th_hi[u, j] = seed_hi[last, kmax - 1, j]
                th_lo[u, j] = seed_lo[last, kmax - 1, j]
                th[u, j] = min(th_hi[u, j], th_lo[u, j])
        n_tiles = r_max.shape[2]
        th_min = np.zeros((ob, n_tiles), np.float32)  # a lower bound of th per tile (refreshed: th only grows)
        for i in range(b_n):
            if i % 64 == 0:
                for u in range(ob):
                    for t in range(n_tiles):
                        th_min[u, t] = th[u, t * _TILE:min(t * _TILE + _TILE, j_n)].min()
            r = rows[q, i, m_n - 1]
            for u in range(ob):
                a, e = a_fac[p, o0 + u, i], e_fac[p, o0 + u, i]
                if done[u, i] or (a <= 0.0 and e <= 0.0):
                    continue
                for t in range(n_tiles):
                    if a * r_max[q, i, t] + e <= th_min[u, t]:
                        continue  # the whole tile is below its thresholds
                    j0 = t * _TILE
                    j1 = min(j0 + _TILE, j_n)
                    for j in range(j0, j1):  # vectorised: one multiply-add and compare per weight
                        flags[j - j0] = a * abs(r[j]) + e > th[u, j]
                    for w in range((j1 - j0 + 7) // 8):  # 8 flags per word; most words are zero
                        if words[w] == 0:
                            continue
                        for j in range(j0 + 8 * w, min(j0 + 8 * w + 8, j1)):
                            if not flags[j - j0]:
                                continue
                            hi, lo = _value(coef, rows, p, q, i, o0 + u, j)
                            if hi > th_hi[u, j]:
                                th_hi[u, j] = _insert(best_hi[u, j], hi)
                            if lo > th_lo[u, j]:
                                th_lo[u, j] = _insert(best_lo[u, j], lo)
                            th[u, j] = min(th_hi[u, j], th_lo[u, j])
        for u in range(ob):
            for kk in range(kmax):
                for j in range(j_n):
                    out_hi[p, kk, (o0 + u) * j_n + j] = best_hi[u, j, kk]
                    out_lo[p, kk, (o0 + u) * j_n + j] = -best_lo[u, j, kk]


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
    f32 = lambda t: t.to(torch.float32).cpu().expand(p, b, o)  # noqa: E731
    coef = torch.stack([f32(c) for coefs in (coef_hi, coef_lo) for pair in coefs for c in pair], -1)
    coef = coef.view(p, b, o, 2, m, 2)  # the kernel's layout: a (sample, output)'s coefficients together
    rows = torch.stack([u.to(torch.float32).cpu() for u in rows], 2)  # [Q, b, M, J]
    a_fac, e_fac, r_max = (torch.from_numpy(t) for t in _sample_bounds(coef.numpy(), rows.numpy()))
    big = a_fac.amax() * r_max.amax() + e_fac.amax()
    if not bool(torch.isfinite(big)) or float(big) > _FINITE_CAP:  # keeps inf/NaN out of the kernel
        inf = torch.full((p, kmax, o * j), math.inf)
        return inf, -inf
    if keep is not None:
        trusted = ~keep.cpu().view(1, 1, -1)
        a_fac, e_fac = a_fac.masked_fill(trusted, 0.0), e_fac.masked_fill(trusted, 0.0)
    reach = a_fac * r_max.amax(-1).view(-1, 1, b) + e_fac  # [P, O, b]: the bound's largest value
    n_seeds = b if b * o * j <= _DENSE_ELEMENTS else min(b, _SEEDS * kmax)  # small layers: all, densely
    seeds = reach.topk(n_seeds, -1, sorted=False).indices  # [P, O, s]
    n_blocks = -(-o // BLOCK)
    out_hi = np.empty((p, kmax, o * j), np.float32)
    out_lo = np.empty((p, kmax, o * j), np.float32)
    args = (coef.numpy(), rows.numpy(), seeds.numpy(), a_fac.numpy(), e_fac.numpy(), r_max.numpy(), kmax, BLOCK,
            out_hi, out_lo)
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
