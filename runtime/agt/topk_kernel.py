"""Fused per-coordinate top-k of per-sample sign-split products, on the CPU (numba).

The poisoning term of a linear layer needs, for every weight (o, j), the k largest of
d_i[o, j] = sum_m c_i[o, m, +] max(u_i[m, j], 0) + c_i[o, m, -] min(u_i[m, j], 0) over the batch,
for an upper and a lower coefficient set c (u_i: the M distinct input rows of sample i, e.g. the
clean x and the poisoned x_lo, x_hi; c: gradient-factor bounds, see descent._sign_split_coefs).
Materialising d (batch x |W|) and running torch.topk costs hundreds of times a plain SGD step;
this kernel keeps a sorted top-k per weight and never forms a value that cannot enter it: a
per-sample bound |d_i[o, j]| <= slope |r_i[j]| + offset (r: one input row; slope and offset per
sample, output, side and region of r_j, see ``_layout_coefs``) costs a multiply-add per weight and
side and is tested against that side's threshold first, so only a few dozen of thousands of
samples per weight are evaluated in full. Thresholds are seeded by each output's samples of
largest bound, evaluated densely, then by the (sample, input) pairs whose reference input lies
within the rows' spread of 0 (where the bound peaks). The rest stream in memory order, each
(sample, output) testing only its inputs of largest |r_j| (the bound grows with |r_j|), down to
where the bound falls below every threshold of the output (over the inputs not within D of 0 in
every sample); where that leaves many inputs (some
thresholds lie far below the others, or many samples tie near the k-th value), the whole row is
evaluated, vectorised, per tile of inputs whose bound reaches the tile's thresholds.
Small layers are evaluated densely throughout.
A skipped value is at most the threshold it was tested against, even as computed in float32, so
the result equals the full evaluation; the caller covers the float32 rounding of the kept values
a priori. Layers with short input rows run transposed (``_transposed``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from pcert.runtime.host_threads import HostThreads, host_array

_FINITE_CAP = 1e36  # |d| stays far below float32 overflow, so no inf or NaN arises inside the kernel
BLOCK = 32  # outputs per task
_SEEDS = 16  # samples per output evaluated densely first, per unit of k
_MIN_SEEDS = 320  # and at least this many (small k: the thresholds start higher, few inserts follow)
_DENSE_ELEMENTS = 1 << 20  # up to this many per-sample values, all are evaluated densely (no filter)
_TILE = 64  # inputs per tile of the whole-row test (a multiple of 8)
_BUCKETS = 32  # per sample, its inputs far from 0 in this many buckets of decreasing |r_j| (see _orders)
_GATHER_COST = 8  # testing one input of a sample's order costs about this many inputs of a whole-row test
_LISTED = 1 / 16  # an input's samples within D of 0 are listed where at most this share of the batch is


@numba.njit(nogil=True, cache=True)
def _layout_rows(rows, out, dev, r_ext, i0, i1):  # pragma: no cover
    """Samples i0..i1-1 of the input rows in the kernel's layout, with the pruning bound's row factors.

    rows: M arrays u_m [Q|1, b, J] (any float dtype); out [Q, b, M, J] float32 (a sample's rows
    together). dev [Q, b] float32 >= D_i = max_{m, j} |u_m[i, j] - r[i, j]| over the float32 rows
    the kernel reads (r = the last row; NaN -> inf: the caller gives up). r_ext [Q, b, tiles, 4]:
    per tile of ``_TILE`` inputs, t = max |r_i[j]|, whether some |r_i[j]| > D (1 or 0), min(t, D)
    and whether some |r_i[j]| <= D. See ``_layout_coefs`` for the bound.
    """
    m_n = len(rows)
    q_n, _, _, j_n = out.shape
    for q in range(q_n):
        for i in range(i0, i1):
            for m in range(m_n):
                src = rows[m]
                qq = q if src.shape[0] > 1 else 0
                for j in range(j_n):
                    out[q, i, m, j] = src[qq, i, j]
            d = 0.0
            for m in range(m_n - 1):
                for j in range(j_n):
                    v = abs(np.float64(out[q, i, m, j]) - np.float64(out[q, i, m_n - 1, j]))
                    d = max(d, v if v < np.inf else np.inf)
            d = d * (1.0 + 1e-12)  # the float64 differences may round down
            dq = np.float32(d)
            dev[q, i] = dq if dq >= d or not d < np.inf else np.nextafter(dq, np.float32(np.inf))
            dq = dev[q, i]
            for t in range(r_ext.shape[2]):
                hi = np.float32(0.0)
                lo = np.float32(np.inf)
                for j in range(t * _TILE, min(t * _TILE + _TILE, j_n)):
                    v = abs(out[q, i, m_n - 1, j])
                    hi = max(hi, v if v < np.inf else np.float32(np.inf))
                    lo = min(lo, v)
                r_ext[q, i, t, 0] = hi
                r_ext[q, i, t, 1] = 1.0 if hi > dq else 0.0  # some input lies outside [-D, D]
                r_ext[q, i, t, 2] = min(hi, dq)
                r_ext[q, i, t, 3] = 1.0 if lo <= dq else 0.0  # some input lies inside


_SLACK = 1e-5  # relative raise of the pruning bound: covers the float32 evaluation of d and of the bound


@numba.njit(nogil=True, cache=True)
def _layout_coefs(coefs, dev, r_ext, keep, out, fac, reach, i0, i1):  # pragma: no cover
    """Samples i0..i1-1 of the coefficients in the kernel's layout, with the pruning bound's factors.

    coefs: 4M arrays [P|1, b, O], hi side then lo side, per row its (+, -) pair; out
    [P, b, O, 2 (hi, lo), M, 2 (+, -)] float32 (a (sample, output)'s coefficients in one cache line).
    The bound, per side, with r = the last input row, D >= |u_m - r| (``_layout_rows``) and s the
    sign of r_j (either at 0):
      |d_i[o, j]| <= a_s |r_j| + e_s        where |r_j| > D,
      |d_i[o, j]| <= m_s |r_j| + e_0        where |r_j| <= D;
    fac [P, b, O, 16] = per side (a+, e+, a-, e-, m+, m-, e_0, unused). Write d = sum_m phi_m(u_m) with
    phi_m(u) = c_m^+ max(u, 0) + c_m^- min(u, 0) and phi_m(r) = c_m^s r, so that
    d = A_s r + sum_{m < last} (phi_m(u_m) - phi_m(r)) with A_s = sum_m c_m^s (the last row's own
    difference vanishes). a_s = |A_s|: it sees the cancellation between clean and poisoned gradients.
    A row u_m on r's side of 0 differs by |c_m^s| |u_m - r| <= |c_m^s| D. A row across 0 (only where
    |r| <= D) by at most |c_m^-s| |u_m| + |c_m^s| |r| <= |c_m^-s| (D - |r|) + |c_m^s| |r|. Where
    |r| > D every row is on r's side: e_s = C_s D, C_s = sum_{m < last} |c_m^s| (a poisoned box
    around a clean input costs about |g| D). Where |r| <= D both cases lie below the chord
    M_m D + (|c_m^s| - M_m) |r| (M_m = max_s |c_m^s|; the first case is constant and the second
    linear, and both meet the chord's ends), so m_s = a_s + C_s - C (at most a_s) and e_0 = C D,
    C = sum_{m < last} M_m. Evaluated in float64 on the float32 coefficients; every slope is then
    raised by ``_SLACK`` times the sum of all coefficient magnitudes and every offset by that times D,
    which covers the float32 evaluation of the bound and of d itself (so a skipped value could not
    have entered the top-k even as computed); inf where a coefficient is inf or NaN (the caller
    gives up). Samples the adversary may not touch (keep[i] = 0) get zero factors. reach [P, O, b]:
    the bound's largest value over a sample's inputs (``_tile_bound`` over the whole row, r_ext the
    row's tiles), inf where not finite or above ``_FINITE_CAP`` (the caller gives up).
    """
    p_n, _, o_n, _, m_n, _ = out.shape
    q_n = dev.shape[0]
    for p in range(p_n):
        q = p if q_n > 1 else 0
        for i in range(i0, i1):
            for k in range(4 * m_n):
                src = coefs[k]
                pp = p if src.shape[0] > 1 else 0
                side, m, s = k // (2 * m_n), (k // 2) % m_n, k % 2
                for o in range(o_n):
                    out[p, i, o, side, m, s] = src[pp, i, o]
            d = np.float64(dev[q, i])
            ext = np.zeros(4, np.float32)  # the whole row's extent
            for t in range(r_ext.shape[2]):
                for e in range(4):
                    v = r_ext[q, i, t, e]
                    if v != v or v > ext[e]:  # NaN propagates
                        ext[e] = v
            for o in range(o_n):
                for side in range(2):
                    sp = 0.0  # A_+ = sum_m c_m^+
                    sn = 0.0
                    rp = 0.0  # C_+ = sum_{m < last} |c_m^+|
                    rn = 0.0
                    c = 0.0  # C = sum_{m < last} max_s |c_m^s|
                    total = 0.0  # all magnitudes; inf or NaN if any coefficient is
                    for m in range(m_n):
                        cp, cn = np.float64(out[p, i, o, side, m, 0]), np.float64(out[p, i, o, side, m, 1])
                        sp += cp
                        sn += cn
                        total += abs(cp) + abs(cn)
                        if m < m_n - 1:
                            rp += abs(cp)
                            rn += abs(cn)
                            c += max(abs(cp), abs(cn))
                    if not total < np.inf:
                        sp = sn = rp = rn = c = total = np.inf
                    slack = _SLACK * total
                    f = 8 * side
                    fac[p, i, o, f] = abs(sp) + slack
                    fac[p, i, o, f + 1] = (rp + slack) * d
                    fac[p, i, o, f + 2] = abs(sn) + slack
                    fac[p, i, o, f + 3] = (rn + slack) * d
                    fac[p, i, o, f + 4] = abs(sp) + rp - c + slack
                    fac[p, i, o, f + 5] = abs(sn) + rn - c + slack
                    fac[p, i, o, f + 6] = (c + slack) * d
                    fac[p, i, o, f + 7] = 0.0
                if not keep[i]:
                    fac[p, i, o, :] = 0.0
                f = fac[p, i, o]
                v = max(_tile_bound(f[0], f[1], f[2], f[3], f[4], f[5], f[6], ext[0], ext[1], ext[2], ext[3]),
                        _tile_bound(f[8], f[9], f[10], f[11], f[12], f[13], f[14], ext[0], ext[1], ext[2], ext[3]))
                f_sum = f[0] + f[1] + f[2] + f[3] + f[6] + f[8] + f[9] + f[10] + f[11] + f[14]  # NaN or inf if any is
                reach[p, o, i] = v if v <= _FINITE_CAP and f_sum < np.inf and ext.sum() < np.inf else np.inf


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _side_bound(ap, ep, an, en, mp, mn, e0, x, d):  # pragma: no cover
    """One side's pruning bound at input value x (``_layout_coefs``)."""
    ax = abs(x)
    inner = ax <= d
    pos = x >= 0.0
    slope = (mp if pos else mn) if inner else (ap if pos else an)
    offset = e0 if inner else (ep if pos else en)
    return slope * ax + offset


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _tile_bound(ap, ep, an, en, mp, mn, e0, top, outer, inner_top, inner):  # pragma: no cover
    """One side's largest pruning bound over a tile of inputs, over the regions present in it (the
    tile's ``r_ext``; branch-free, as the bounds are finite and non-negative)."""
    return max(max(ap * top + ep, an * top + en) * outer, (e0 + max(max(mp, mn), 0.0) * inner_top) * inner)


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _values(coef, p, i, o, u, v_hi, v_lo, j0, j1):  # pragma: no cover
    """d_i[o, j] for inputs j0..j1-1 of sample i's rows u [M, J] (or of a gathered copy of some of
    them), both sides into v_hi, v_lo (v_lo negated: both are kept as largest values).

    Loops over slices from 0 (with the offset in the loop bound, numba's code runs 15x slower)."""
    for m in range(u.shape[0]):
        hp, hn = coef[p, i, o, 0, m, 0], coef[p, i, o, 0, m, 1]
        lp, ln = coef[p, i, o, 1, m, 0], coef[p, i, o, 1, m, 1]
        r, vh, vl = u[m, j0:j1], v_hi[j0:j1], v_lo[j0:j1]
        if m == 0:  # the first row writes, the others accumulate (one of max(x, 0),
            for j in range(j1 - j0):  # min(x, 0) is zero: select the coefficient by x's sign)
                x = r[j]
                up = x > 0.0
                vh[j] = (hp if up else hn) * x
                vl[j] = -((lp if up else ln) * x)
        elif hp != 0.0 or hn != 0.0 or lp != 0.0 or ln != 0.0:
            for j in range(j1 - j0):
                x = r[j]
                up = x > 0.0
                vh[j] += (hp if up else hn) * x
                vl[j] -= (lp if up else ln) * x


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
def _offer(coef, rows, p, q, i, o, j, best_hi, best_lo, th_hi, th_lo):  # pragma: no cover
    """Evaluate d_i[o, j] and insert each side where it beats that side's threshold (th_*[j], updated).

    The kernel's hot passes write these two inserts inline on already computed values: through a
    helper taking per-value views (best_hi[u, j], th_hi[u]) the kernel ran 20-25% slower."""
    hi, lo = _value(coef, rows, p, q, i, o, j)
    if hi > th_hi[j]:
        th_hi[j] = _insert(best_hi, hi)
    if lo > th_lo[j]:
        th_lo[j] = _insert(best_lo, lo)


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
def _kernel(coef, rows, seeds, fac, dev, r_ext, order, starts, tops, n_inner, col_on, outer, row_ptr, row_cols,  # pragma: no cover
            kmax, walk_max, block, out_hi, out_lo, first, last):
    """Tasks first..last-1 of (p, block of outputs); coef [P, b, O, 2, M, 2], rows [Q, b, M, J].

    Seeding: each output's samples of largest bound (``seeds``) are evaluated for all inputs and
    merged into the top-k lists branch-free, which lifts the thresholds near their final values.
    Then the (sample, input) pairs whose reference input lies within D of 0, on inputs where few
    samples do (``col_on``; sample i's inputs row_cols[row_ptr[q b + i]:row_ptr[q b + i + 1]]), are
    evaluated first, for the outputs whose chord bound reaches a floor below all their thresholds:
    the chord's peak is where a sample's other inputs (hence the seeds) say nothing about, and most
    of these values enter the top-k. The pass that follows leaves them out. Then every other
    (sample, output) pair, in memory order: its inputs with |r_j| > D come in buckets of
    decreasing |r_j| (``_orders``: order, starts, tops), and those in the buckets whose top bound
    (``_layout_coefs``; fac its factors, dev = D) reaches a floor below all of the output's
    thresholds, plus the sample's unlisted inputs within D of 0 if their chord bound does, are
    tested one by one against their own thresholds, and evaluated and inserted where the bound
    exceeds one. Where that would be more than ``walk_max`` inputs, every tile of the row whose
    bound reaches the tile's thresholds is evaluated instead (vectorised, into byte flags read 8
    at a time).
    """
    b_n, o_n = coef.shape[1], coef.shape[2]
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
        done = np.zeros((ob, b_n), np.bool_)
        v_hi = np.empty(j_n, np.float32)
        v_lo = np.empty(j_n, np.float32)
        near = np.empty((m_n, j_n), np.float32)  # a sample's rows at its listed inputs
        flags = np.zeros(_TILE, np.uint8)
        words = flags.view(np.uint64)
        for u in range(ob):
            seed_hi[0, :, :] = 0.0
            seed_lo[0, :, :] = 0.0
            n_merged = 0
            for s in range(seeds.shape[2]):
                i = seeds[p, o0 + u, s]
                f = fac[p, i, o0 + u]
                if max(max(f[0], f[2]), f[6]) <= 0.0 and max(max(f[8], f[10]), f[14]) <= 0.0:
                    continue  # zero (or trusted: masked) samples are never evaluated
                done[u, i] = True
                _values(coef, p, i, o0 + u, rows[q, i], v_hi, v_lo, 0, j_n)
                src = n_merged % 2
                _merge(seed_hi[src], seed_hi[1 - src], v_hi)
                _merge(seed_lo[src], seed_lo[1 - src], v_lo)
                n_merged += 1
            cur = n_merged % 2  # the buffer the last merge wrote
            for j in range(j_n):
                for c in range(kmax):
                    best_hi[u, j, c] = seed_hi[cur, c, j]
                    best_lo[u, j, c] = seed_lo[cur, c, j]
                th_hi[u, j] = seed_hi[cur, kmax - 1, j]
                th_lo[u, j] = seed_lo[cur, kmax - 1, j]
        listed = col_on[q]
        floor = np.empty((ob, 2), np.float32)  # the smallest threshold of each output's inputs, per side
        for u in range(ob):
            floor[u, 0], floor[u, 1] = th_hi[u].min(), th_lo[u].min()
        for i in range(b_n):  # first the listed inputs within D of 0, in memory order
            c0, c1 = row_ptr[q * b_n + i], row_ptr[q * b_n + i + 1]
            if c0 == c1:
                continue
            d = dev[q, i]
            gathered = False
            for u in range(ob):
                f = fac[p, i, o0 + u]
                if done[u, i] or (_tile_bound(f[0], f[1], f[2], f[3], f[4], f[5], f[6], d, 0.0, d, 1.0) <= floor[u, 0]
                                  and _tile_bound(f[8], f[9], f[10], f[11], f[12], f[13], f[14], d, 0.0, d, 1.0)
                                  <= floor[u, 1]):
                    continue  # no input within D of 0 can reach a threshold
                if not gathered:  # the sample's listed inputs, contiguous for all its outputs
                    for m in range(m_n):
                        for c in range(c1 - c0):
                            near[m, c] = rows[q, i, m, row_cols[c0 + c]]
                    gathered = True
                # most of these values enter the top-k: evaluated without a bound test
                _values(coef, p, i, o0 + u, near, v_hi, v_lo, 0, c1 - c0)
                for c in range(c1 - c0):
                    j = row_cols[c0 + c]
                    if v_hi[c] > th_hi[u, j]:
                        th_hi[u, j] = _insert(best_hi[u, j], v_hi[c])
                    if v_lo[c] > th_lo[u, j]:
                        th_lo[u, j] = _insert(best_lo[u, j], v_lo[c])
        n_tiles, n_buckets = r_ext.shape[2], tops.shape[2]
        th_min = np.zeros((ob, 2, n_tiles), np.float32)  # per tile, below its thresholds
        live = outer[q]
        floor_out = np.empty((ob, 2), np.float32)  # the same over the inputs beyond D of 0 in some sample
        stale = np.ones(ob, np.bool_)  # an output's thresholds may have grown since its minima were taken
        for i in range(b_n):  # then every other (sample, output) pair, in memory order
            if i % 64 == 0:  # the thresholds only grow: their minima stay below them
                for u in range(ob):
                    if not stale[u]:
                        continue
                    stale[u] = False
                    floor[u, 0], floor[u, 1] = th_hi[u].min(), th_lo[u].min()
                    floor_out[u, 0], floor_out[u, 1] = np.inf, np.inf  # (an input within D of 0 in every
                    for j in range(j_n):  # sample may hold no value: its threshold can stay 0)
                        if live[j]:
                            floor_out[u, 0] = min(floor_out[u, 0], th_hi[u, j])
                            floor_out[u, 1] = min(floor_out[u, 1], th_lo[u, j])
                    for t in range(n_tiles):
                        th_min[u, 0, t] = th_hi[u, t * _TILE:min(t * _TILE + _TILE, j_n)].min()
                        th_min[u, 1, t] = th_lo[u, t * _TILE:min(t * _TILE + _TILE, j_n)].min()
            r = rows[q, i, m_n - 1]
            d = dev[q, i]
            ords = order[q, i]
            n_out, n_in = starts[q, i, -1], n_inner[q, i]
            for u in range(ob):
                f = fac[p, i, o0 + u]
                hp, hep, hn, hen, hmp, hmn, he0 = f[0], f[1], f[2], f[3], f[4], f[5], f[6]
                lp, lep, ln, len_, lmp, lmn, le0 = f[8], f[9], f[10], f[11], f[12], f[13], f[14]
                if done[u, i] or (max(max(hp, hn), he0) <= 0.0 and max(max(lp, ln), le0) <= 0.0):
                    continue
                # outer inputs (|r_j| > D) by buckets of decreasing |r_j|: both sides' bounds fall with
                # |r_j|, so the inputs from the first bucket whose top lies below both floors on are skipped
                ah, eh, al, el = max(hp, hn), max(hep, hen), max(lp, ln), max(lep, len_)
                fh, fl = floor_out[u, 0], floor_out[u, 1]
                cut = 0
                while cut < n_buckets and (ah * tops[q, i, cut] + eh > fh or al * tops[q, i, cut] + el > fl):
                    cut += 1
                hi_c = starts[q, i, cut]
                inner = n_in > 0 and (_tile_bound(hp, hep, hn, hen, hmp, hmn, he0, d, 0.0, d, 1.0) > floor[u, 0]
                                      or _tile_bound(lp, lep, ln, len_, lmp, lmn, le0, d, 0.0, d, 1.0) > floor[u, 1])
                n_tail = n_in if inner else 0
                if hi_c + n_tail > walk_max:  # many inputs to test: the whole row, by tiles
                    stale[u] = True
                    for t in range(n_tiles):
                        x0, x1, x2, x3 = r_ext[q, i, t, 0], r_ext[q, i, t, 1], r_ext[q, i, t, 2], r_ext[q, i, t, 3]
                        if (_tile_bound(hp, hep, hn, hen, hmp, hmn, he0, x0, x1, x2, x3) <= th_min[u, 0, t]
                                and _tile_bound(lp, lep, ln, len_, lmp, lmn, le0, x0, x1, x2, x3) <= th_min[u, 1, t]):
                            continue  # the whole tile is below its thresholds
                        j0 = t * _TILE
                        j1 = min(j0 + _TILE, j_n)
                        _values(coef, p, i, o0 + u, rows[q, i], v_hi, v_lo, j0, j1)  # vectorised, exact: the
                        for j in range(j0, j1):  # values themselves are the test (near-ties defeat any bound)
                            flags[j - j0] = ((~(listed[j] & (abs(r[j]) <= d)))  # (listed pairs were seen above)
                                             & ((v_hi[j] > th_hi[u, j]) | (v_lo[j] > th_lo[u, j])))
                        for w in range((j1 - j0 + 7) // 8):  # 8 flags per word; most words are zero
                            if words[w] == 0:
                                continue
                            for j in range(j0 + 8 * w, min(j0 + 8 * w + 8, j1)):
                                if not flags[j - j0]:
                                    continue
                                if v_hi[j] > th_hi[u, j]:
                                    th_hi[u, j] = _insert(best_hi[u, j], v_hi[j])
                                if v_lo[j] > th_lo[u, j]:
                                    th_lo[u, j] = _insert(best_lo[u, j], v_lo[j])
                    continue
                for c in range(hi_c + n_tail):
                    j = ords[c if c < hi_c else c - hi_c + n_out]
                    x = r[j]
                    if (_side_bound(hp, hep, hn, hen, hmp, hmn, he0, x, d) > th_hi[u, j]
                            or _side_bound(lp, lep, ln, len_, lmp, lmn, le0, x, d) > th_lo[u, j]):
                        _offer(coef, rows, p, q, i, o0 + u, j, best_hi[u, j], best_lo[u, j], th_hi[u], th_lo[u])
                        stale[u] = True
        for u in range(ob):
            for kk in range(kmax):
                for j in range(j_n):
                    out_hi[p, kk, (o0 + u) * j_n + j] = best_hi[u, j, kk]
                    out_lo[p, kk, (o0 + u) * j_n + j] = -best_lo[u, j, kk]


@dataclass
class _RowLayout:
    """What the kernel derives from the input rows alone (``_layout_rows``, ``_inner_lists``, ``_orders``):
    the same for every budget point whose rows are equal, as in a sweep over n or m at one eps."""
    sources: list[Tensor]  # the rows it was made from, with their versions: an in-place change voids it
    versions: list[int]
    row_t: np.ndarray
    dev: np.ndarray
    r_ext: np.ndarray
    col_on: np.ndarray
    row_ptr: np.ndarray
    row_cols: np.ndarray
    outer: np.ndarray
    order: np.ndarray | None = None  # the walk's order: made on first need
    starts: np.ndarray | None = None
    tops: np.ndarray | None = None
    n_inner: np.ndarray | None = None

    def serves(self, rows: list[Tensor]) -> bool:
        return len(rows) == len(self.sources) and all(
            s._version == v and (r is s or (r.shape == s.shape and r.dtype == s.dtype and torch.equal(r, s)))
            for r, s, v in zip(rows, self.sources, self.versions))


def outer_topk(coef_hi: list[tuple[Tensor, Tensor]], coef_lo: list[tuple[Tensor, Tensor]], rows: list[Tensor],
               keep: Tensor | None, kmax: int, memo: dict | None = None) -> tuple[Tensor, Tensor]:
    """kmax largest of max(d_hi, 0) and kmax smallest of min(d_lo, 0) per coordinate, in float32.

    rows: M tensors u_m [Q, b, J] (Q = 1 or P); coef_*: per row the coefficients of max(u_m, 0) and
    min(u_m, 0), each [P, b, O]; keep [b] marks the rows the adversary may touch (None: all).
    memo: a dict the caller keeps across calls whose rows may repeat (the budget points of one
    layer): the rows' part of the kernel's inputs is made once for equal rows.
    Returns two [P, kmax, O * J] float32 tensors (unsorted), in the layout of ``RunningTopK.values``.
    """
    (_, b, o), j = coef_hi[0][0].shape, rows[0].shape[2]
    if o > 4 * j:  # short input rows (e.g. a 2-feature input layer): stream the long axis
        return _transposed(coef_hi, coef_lo, rows, keep, kmax)
    memo = {} if memo is None else memo
    with HostThreads() as threads:
        run, workers = threads.run, threads.workers
        lay = memo.get("rows")
        if lay is None or not lay.serves(rows):
            lay = memo["rows"] = _row_layout(rows, run)
        coef, fac, reach = _coef_layouts(coef_hi, coef_lo, lay.dev, lay.r_ext, keep, run)
        p = fac.shape[0]
        if not float(reach.max()) <= _FINITE_CAP:  # keeps inf/NaN out of the kernel
            inf = torch.full((p, kmax, o * j), math.inf)
            return inf, -inf
        n_seeds = b if b * o * j <= _DENSE_ELEMENTS else min(b, max(_SEEDS * kmax, _MIN_SEEDS))  # small layers: all
        q = lay.row_t.shape[0]
        if n_seeds < b and lay.order is None:  # some samples are walked: their order
            lay.order, lay.n_inner = np.empty((q, b, j), np.int32), np.zeros((q, b), np.int32)
            lay.starts, lay.tops = np.zeros((q, b, _BUCKETS + 1), np.int32), np.empty((q, b, _BUCKETS), np.float32)
            run(_orders, b, lay.row_t, lay.dev, lay.col_on, lay.order, lay.starts, lay.tops, lay.n_inner)
        order, starts, tops, n_inner = ((lay.order, lay.starts, lay.tops, lay.n_inner) if n_seeds < b else
                                        (np.empty((q, b, 0), np.int32), np.zeros((q, b, 1), np.int32),
                                         np.empty((q, b, 0), np.float32), np.zeros((q, b), np.int32)))
        seeds = torch.from_numpy(reach).topk(n_seeds, -1, sorted=False).indices  # [P, O, s]
        block = min(BLOCK, -(-o // -(-workers // p)))  # at least one task per worker where outputs allow
        out_hi = np.empty((p, kmax, o * j), np.float32)
        out_lo = np.empty((p, kmax, o * j), np.float32)
        with torch.profiler.record_function("pcert::topk_kernel"):  # visible in bench/profile_agt.py
            run(_kernel, p * -(-o // block), coef, lay.row_t, seeds.numpy(), fac, lay.dev, lay.r_ext, order, starts,
                tops, n_inner, lay.col_on, lay.outer, lay.row_ptr, lay.row_cols, kmax, j // _GATHER_COST, block,
                out_hi, out_lo)
    return torch.from_numpy(out_hi), torch.from_numpy(out_lo)


def _row_layout(rows: list[Tensor], run) -> _RowLayout:
    """The rows [Q, b, M, J] in the kernel's layout, D per sample [Q, b], per-tile row extents
    [Q, b, tiles, 4], and the lists of inputs within D of 0 (``_inner_lists``)."""
    (q, b), m, j = (max(u.shape[0] for u in rows), rows[0].shape[1]), len(rows), rows[0].shape[2]
    row_t = np.empty((q, b, m, j), np.float32)
    dev = np.empty((q, b), np.float32)
    r_ext = np.empty((q, b, -(-j // _TILE), 4), np.float32)
    run(_layout_rows, b, _sources(rows), row_t, dev, r_ext)
    col_on, row_ptr, row_cols, outer = _inner_lists(row_t, dev, max(1, int(_LISTED * b)))
    return _RowLayout(list(rows), [u._version for u in rows], row_t, dev, r_ext, col_on, row_ptr, row_cols, outer)


def _coef_layouts(coef_hi: list[tuple[Tensor, Tensor]], coef_lo: list[tuple[Tensor, Tensor]], dev: np.ndarray,
                  r_ext: np.ndarray, keep: Tensor | None, run) -> tuple[np.ndarray, ...]:
    """Coefficients [P, b, O, 2, M, 2] in the kernel's layout, bound factors [P, b, O, 16] (zero for
    samples not kept) and each (sample, output)'s largest bound [P, O, b]."""
    (_, b, o), m = coef_hi[0][0].shape, len(coef_hi)
    p = max(c.shape[0] for coefs in (coef_hi, coef_lo) for pair in coefs for c in pair)
    coef = np.empty((p, b, o, 2, m, 2), np.float32)
    fac = np.empty((p, b, o, 16), np.float32)
    reach = np.empty((p, o, b), np.float32)
    keep_np = np.ones(b, np.bool_) if keep is None else keep.cpu().numpy()
    run(_layout_coefs, b, _sources([c for coefs in (coef_hi, coef_lo) for pair in coefs for c in pair]),
        dev, r_ext, keep_np, coef, fac, reach)
    return coef, fac, reach


def _layouts(coef_hi: list[tuple[Tensor, Tensor]], coef_lo: list[tuple[Tensor, Tensor]], rows: list[Tensor],
             keep: Tensor | None = None) -> tuple[np.ndarray, ...]:
    """The kernel's inputs in one call, for tests: coef, rows, D, row extents, factors and reach."""
    run = lambda fn, n, *args: fn(*args, 0, n)  # noqa: E731
    lay = _row_layout(rows, run)
    coef, fac, reach = _coef_layouts(coef_hi, coef_lo, lay.dev, lay.r_ext, keep, run)
    return coef, lay.row_t, lay.dev, lay.r_ext, fac, reach


@numba.njit(nogil=True, cache=True)
def _inner_lists(rows, dev, cap):  # pragma: no cover
    """The (sample, input) pairs whose reference input lies within D of 0, on the inputs where at
    most ``cap`` samples do (on others the filtered pass keeps them). Returns col_on [Q, J], per
    sample its such inputs: row_ptr [Q b + 1], row_cols (ascending inputs), and whether an input lies
    beyond D of 0 in some sample (outer [Q, J]). rows [Q, b, M, J]."""
    q_n, b_n, m_n, j_n = rows.shape
    counts = np.zeros((q_n, j_n), np.int64)
    for q in range(q_n):
        for i in range(b_n):
            d = dev[q, i]
            for j in range(j_n):
                counts[q, j] += abs(rows[q, i, m_n - 1, j]) <= d
    col_on = counts <= cap
    row_ptr = np.zeros(q_n * b_n + 1, np.int64)
    row_cols = np.empty(np.sum(np.where(col_on, counts, 0)), np.int32)
    n = 0
    for q in range(q_n):
        for i in range(b_n):
            d = dev[q, i]
            for j in range(j_n):
                if col_on[q, j] and abs(rows[q, i, m_n - 1, j]) <= d:
                    row_cols[n] = j
                    n += 1
            row_ptr[q * b_n + i + 1] = n
    return col_on, row_ptr, row_cols, counts < b_n


@numba.njit(nogil=True, cache=True)
def _orders(rows, dev, col_on, order, starts, tops, n_inner, i0, i1):  # pragma: no cover
    """Per sample i0..i1-1, the order in which the kernel's last pass tests its inputs: those with
    |r_j| > D in ``_BUCKETS`` buckets of decreasing |r_j| (bucket c: order[starts[c]:starts[c + 1]],
    every later bucket's |r_j| at most tops[c]), then those within D of 0 on inputs without a list
    (``_inner_lists``; n_inner of them). rows [Q, b, M, J] (r = the last row), order [Q, b, J]."""
    q_n, _, m_n, j_n = rows.shape
    n_b = starts.shape[2] - 1
    where = np.empty(j_n, np.int32)
    top = np.empty(n_b, np.float32)
    fill = np.empty(n_b, np.int32)
    for q in range(q_n):
        for i in range(i0, i1):
            d = dev[q, i]
            r = rows[q, i, m_n - 1]
            big = np.float32(0.0)
            for j in range(j_n):
                big = max(big, abs(r[j]))
            scale = n_b / big if big > 0.0 else 0.0
            cnt = starts[q, i]
            cnt[:] = 0
            top[:] = 0.0
            for j in range(j_n):
                ax = abs(r[j])
                if ax > d:
                    c = min(int((big - ax) * scale), n_b - 1)  # non-increasing in |r_j|
                    where[j] = c
                    cnt[c + 1] += 1
                    top[c] = max(top[c], ax)
                else:
                    where[j] = -1
            for c in range(n_b):
                cnt[c + 1] += cnt[c]
            m = np.float32(0.0)
            for c in range(n_b - 1, -1, -1):  # suffix maxima: sound whatever the rounding of c did
                m = max(m, top[c])
                tops[q, i, c] = m
            fill[:] = cnt[:n_b]
            n = cnt[n_b]
            for j in range(j_n):
                c = where[j]
                if c >= 0:
                    order[q, i, fill[c]] = j
                    fill[c] += 1
                elif not col_on[q, j]:
                    order[q, i, n] = j
                    n += 1
            n_inner[q, i] = n - cnt[n_b]


def _sources(ts: list[Tensor]) -> tuple[np.ndarray, ...]:
    """Host arrays of one dtype (a homogeneous tuple for numba); a broadcast budget axis is kept at
    length 1 (the layouts index it by point only where it is longer)."""
    dtype = torch.float64 if any(t.dtype != ts[0].dtype for t in ts) else ts[0].dtype
    return tuple(host_array(t, dtype) for t in ts)


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
