"""Descent-direction bounds over a batch: AGT Thm 3.3 (bounded) and Thm B.1 (unbounded, clipped).

Both have the form  sum_i U_i + SEMax_k{ U~_i - U_i }  (upper; lower with SEMin), where U_i bounds
the clean per-sample gradient over the parameter box and U~_i the poisoned one; an unbounded
adversary replaces a point by anything, i.e. U~_i = kappa after clipping (Thm B.1 rewritten:
SEMax_{b-n}{U} + n kappa = sum U + SEMax_n{kappa - U}). Any per-sample bounds U_i work as long
as the sum and the differences use the same ones (in exact arithmetic; rounding is covered): a
tighter sum, such as Rump's batch product intersected with the sign split, can drop a poisoned
sample's own excess of its clean bound. Linear layers without clipping take both from sign-split
products: the sums as matmuls over the batch, the per-sample differences (float32) through a fused
top-k kernel (topk_kernel.py on the CPU, topk_triton.py on CUDA), each budget point with its own k.
Other layers stream the batch in chunks, summing the per-sample bounds (``_position_sums``: the
exact range per sample wherever a corner kernel runs) and keeping a running torch.topk of the
differences (memory ~(k + chunk) x |theta| per budget point). Differences are clamped at 0, since
the adversary may leave a point alone. Floating-point error of everything computed outside
interval.py is bounded a priori: gamma * sum_i |G_i| |X_i|^T (one more matmul) for streamed
layers; for linear layers batch maxima suffice (see ``_linear_error``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch.profiler import record_function

from pcert.compiler.graph import Layer
from pcert.runtime import triton_support
from pcert.runtime.constants import constant
from pcert.runtime.bounds import corner_matmul
from pcert.runtime.bounds.interval import (Bounds, abs_matmul_up, covers_coarser, gamma, matmul_bounds, mid_rad,
                                           outward, shared_matmul, unit_roundoff)

from .backward import Factors
from . import topk_triton
from .topk_kernel import outer_topk

CHUNK_ELEMENTS = 1 << 23  # per-sample values held at once per tensor (~32 MB in float32)


@dataclass
class LayerGrads:
    """One trainable layer's gradient factors: clean/poisoned bounds and the nominal point."""

    layer: Layer
    clean: Factors
    poisoned: Factors | None
    nominal: tuple[Tensor, Tensor]
    bias: bool


@dataclass
class Adversary:
    """Per-point budget of this batch (already capped at its untrusted count)."""

    k: list[int]                 # points the adversary may touch, per budget point
    unbounded: list[bool]        # Thm B.1 (replacement) instead of Thm 3.3
    clip: float | None
    clip_method: str
    untrusted: Tensor | None     # [b] bool; None = all rows may be poisoned
    moved: list[bool]            # per point: its poisoned layer inputs differ from the clean ones (eps > 0)


def _arrange(t: Tensor) -> Tensor:
    """[P, b, g, r, L] -> [P, g, r, b * L] (batch and positions become one contraction axis)."""
    p, b, g, r, l_ = t.shape
    return t.permute(0, 2, 3, 1, 4).reshape(p, g, r, b * l_)


def _mag(lo: Tensor, hi: Tensor) -> Tensor:
    return torch.maximum(lo.abs(), hi.abs())


def _sum_bounds(f: Factors, bias: bool) -> Bounds:
    """sum_i of the per-sample Rump bounds, as one interval matmul (+ the bias column sums)."""
    gl, gh = _arrange(f.g_lo), _arrange(f.g_hi)
    xl = _arrange(f.x_lo)
    xh = xl if f.x_lo is f.x_hi else _arrange(f.x_hi)
    lo, hi = matmul_bounds(gl, gh, xl, xh)
    lo, hi = lo.flatten(1), hi.flatten(1)
    if bias:
        err = gamma(gl.shape[-1] + 2, gl.dtype) * _mag(gl, gh).sum(-1).flatten(1)
        blo, bhi = outward(gl.sum(-1).flatten(1) - err, gh.sum(-1).flatten(1) + err)
        lo, hi = torch.cat([lo, blo], 1), torch.cat([hi, bhi], 1)
    return lo, hi


def _idle_sums(f: Factors, bias: bool, k: list[int]) -> Bounds | None:
    """``_sum_bounds`` of the points without a top-k (k = 0), [P, F] (zero rows for the others), or None
    if there are none: only their factors are multiplied (a sweep has one such point among many)."""
    idle = [q for q, kq in enumerate(k) if kq == 0]
    if not idle:
        return None
    if len(idle) == len(k):
        return _sum_bounds(f, bias)
    idx = constant(tuple(idle), torch.int64, f.g_lo.device)
    pick = lambda t: t.index_select(0, idx) if t.shape[0] > 1 else t  # noqa: E731
    x_lo = pick(f.x_lo)
    lo, hi = _sum_bounds(Factors(pick(f.g_lo), pick(f.g_hi), x_lo, x_lo if f.x_lo is f.x_hi else pick(f.x_hi)), bias)
    spread = lambda t: t.new_zeros(len(k), t.shape[1]).index_copy(0, idx, t)  # noqa: E731
    return spread(lo), spread(hi)


def _mag_sum(grads: LayerGrads) -> Tensor:
    """sum_i |G_i| |X_i|^T over clean and poisoned factors: scales every streamed rounding error."""
    fs = [grads.clean] + ([grads.poisoned] if grads.poisoned is not None else [])
    gm = sum(_mag(f.g_lo, f.g_hi) for f in fs)
    xm = sum(_mag(f.x_lo, f.x_hi) for f in fs)
    ga = _arrange(gm)
    m = torch.matmul(ga, _arrange(xm).transpose(-1, -2)).flatten(1)
    if grads.bias:
        m = torch.cat([m, ga.sum(-1).flatten(1)], 1)
    return m


def _position_sums(g_lo: Tensor, g_hi: Tensor, x_lo: Tensor, x_hi: Tensor, exact_x: bool) -> Bounds:
    """Per-sample sums over positions of g (x) x: [P, c, G, r, L] and [P|1, c, G, col, L] -> [P, c, G, r, col].

    Rump's midpoint-radius product when x is exact (then it is the exact range) or where no corner
    kernel runs (at most 1.5x wider); otherwise the exact corner sums, one product per sample and
    group (``corner_matmul``, with its own rounding term).
    """
    p, c, groups, r, positions = g_lo.shape
    flat = lambda t: t.expand(p, *t.shape[1:]).reshape(p * c * groups, t.shape[3], positions)  # noqa: E731
    if not exact_x and corner_matmul.applies(g_lo[0, 0], x_lo[0, 0]):  # [G, r, L]: the kernels' dtype and device
        lo, hi = corner_matmul.corner_linear_bounds(flat(g_lo), flat(g_hi), flat(x_lo), flat(x_hi), None, None)
        return lo.view(p, c, groups, r, -1), hi.view(p, c, groups, r, -1)
    gm, gr = mid_rad(g_lo, g_hi)
    xm, xr = (x_lo, None) if exact_x else mid_rad(x_lo, x_hi)
    mm = lambda u, v: u @ v.transpose(-1, -2)  # noqa: E731
    mid = mm(gm, xm)
    rad = mm(gr, xm.abs()) if xr is None else mm(gm.abs(), xr) + mm(gr, xm.abs() + xr)
    return mid - rad, mid + rad


def _dense(f: Factors, sl: slice, bias: bool) -> Bounds:
    """Per-sample bounds [P, c, F] of the samples in ``sl`` (weights flattened, then bias).

    Linear layers (L = 1) use the exact interval product (corner min/max); convolutions sum it over
    positions (``_position_sums``).
    """
    g_lo, g_hi = f.g_lo[:, sl], f.g_hi[:, sl]
    exact_x = f.x_lo is f.x_hi
    x_lo = f.x_lo[:, sl]
    x_hi = x_lo if exact_x else f.x_hi[:, sl]
    if g_lo.shape[-1] == 1:
        xl, xh = x_lo.transpose(-1, -2), x_hi.transpose(-1, -2)
        if exact_x:
            a, b = g_lo * xl, g_hi * xl
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        else:
            c = (g_lo * xl, g_lo * xh, g_hi * xl, g_hi * xh)
            lo = torch.minimum(torch.minimum(c[0], c[1]), torch.minimum(c[2], c[3]))
            hi = torch.maximum(torch.maximum(c[0], c[1]), torch.maximum(c[2], c[3]))
    else:
        lo, hi = _position_sums(g_lo, g_hi, x_lo, x_hi, exact_x)
    p, c = lo.shape[:2]
    lo, hi = torch.nan_to_num(lo.reshape(p, c, -1), nan=-math.inf), torch.nan_to_num(hi.reshape(p, c, -1), nan=math.inf)
    if bias:
        lo = torch.cat([lo, g_lo.sum(-1).reshape(p, c, -1)], 2)
        hi = torch.cat([hi, g_hi.sum(-1).reshape(p, c, -1)], 2)
    return lo, hi


def _dense_point(g: Tensor, x: Tensor, sl: slice, bias: bool) -> Tensor:
    gc, xc = g[:, sl], x[:, sl]
    w = gc * xc.transpose(-1, -2) if gc.shape[-1] == 1 else gc @ xc.transpose(-1, -2)
    w = w.reshape(gc.shape[0], gc.shape[1], -1)
    return torch.cat([w, gc.sum(-1).reshape(gc.shape[0], gc.shape[1], -1)], 2) if bias else w


def _norm_scale(sq_lo: Tensor, sq_hi: Tensor, kappa: float, n_params: int) -> Bounds:
    """Bounds of min(1, kappa / ||g||) from bounds of ||g||^2 (widened for the rounding of the norm)."""
    g = gamma(n_params + 8, sq_lo.dtype)
    n_lo = torch.sqrt(sq_lo) * (1 - 2 * g)
    n_hi = torch.sqrt(sq_hi) * (1 + 2 * g)
    u = 4 * unit_roundoff(sq_lo.dtype)
    s_lo = torch.clamp(kappa / n_hi, max=1.0) * (1 - u)
    s_hi = torch.clamp(kappa / n_lo, max=1.0) * (1 + u)
    return s_lo.unsqueeze(-1), s_hi.unsqueeze(-1)


def _scale_clip(lo: Tensor, hi: Tensor, s: Bounds, kappa: float) -> Bounds:
    s_lo, s_hi = s
    lo, hi = outward(torch.minimum(lo * s_lo, lo * s_hi), torch.maximum(hi * s_lo, hi * s_hi))
    return lo.clamp(-kappa, kappa), hi.clamp(-kappa, kappa)


def _mig_sq(lo: Tensor, hi: Tensor) -> Tensor:
    mig = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    return (mig * mig).sum(-1)


def _chunks(b: int, width: int, elements: int = CHUNK_ELEMENTS):
    step = max(1, elements // max(width, 1))
    return [slice(s, min(s + step, b)) for s in range(0, b, step)]


def _select_sum(best: Tensor | None, k: list[int], largest: bool) -> Tensor:
    """Sum of the k[p] largest (smallest) values kept in ``best`` [P, kmax, F]."""
    if best is None:
        return None
    vals = torch.sort(best, dim=1, descending=largest).values
    csum = torch.cumsum(vals, 1)
    kk = constant(tuple(k), torch.int64, best.device)
    idx = (kk - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, vals.shape[2])
    out = torch.gather(csum, 1, idx).squeeze(1)
    return torch.where((kk > 0).view(-1, 1), out, torch.zeros_like(out))


class RunningTopK:
    """Per-coordinate k largest (or smallest) values over chunks streamed along ``dim``: memory ~(k + c) F."""

    def __init__(self, k: int, largest: bool, dim: int = 1) -> None:
        self.k, self.largest, self.dim = k, largest, dim
        self.best: Tensor | None = None  # [P, <=k, F] for dim 1

    def add(self, d: Tensor) -> None:
        cat = d if self.best is None else torch.cat((self.best, d), self.dim)
        self.best = cat if cat.shape[self.dim] <= self.k else cat.topk(self.k, dim=self.dim, largest=self.largest,
                                                                        sorted=False).values

    def values(self) -> Tensor | None:
        return self.best


Coefs = list[tuple[Tensor, Tensor]]  # per input row u_m: coefficients of max(u_m, 0) and min(u_m, 0), [P, b, out]


def _sign_split_coefs(g_lo: Tensor, g_hi: Tensor, x_lo: Tensor, x_hi: Tensor,
                      exact_x: bool) -> tuple[list[Tensor], Coefs, Coefs]:
    """Per-sample product bounds of g (x) x in sign-split form over the distinct input rows u_m:

    lo_i[o, j] = sum_m c_lo[m][0][i, o] max(u_m[i, j], 0) + c_lo[m][1][i, o] min(u_m[i, j], 0), hi alike.
    Splitting both factors into non-negative and non-positive parts makes every term linear in the end
    points (the exact interval product wherever g_o or x_j is sign-definite); an exact x gives one row.
    g [P, b, out], x [P|1, b, in]; returns rows ([x] or [x_lo, x_hi]) and the lo and hi coefficients.
    """
    if exact_x:
        return [x_lo], [(g_lo, g_hi)], [(g_hi, g_lo)]
    gp_l, gp_h, gn_l, gn_h = g_lo.clamp(min=0), g_hi.clamp(min=0), g_lo.clamp(max=0), g_hi.clamp(max=0)
    return [x_lo, x_hi], [(gp_l, gp_h), (gn_l, gn_h)], [(gn_h, gn_l), (gp_h, gp_l)]


def _factored_sum(coefs: Coefs, rows: list[Tensor]) -> Tensor:
    """sum_i of the sign-split products over the batch: [P, out, in] (2 matmuls per row)."""
    return sum(torch.matmul(cp.transpose(1, 2), u.clamp(min=0)) + torch.matmul(cn.transpose(1, 2), u.clamp(max=0))
               for (cp, cn), u in zip(coefs, rows))


def _streamed_topk(coef_hi: Coefs, coef_lo: Coefs, rows: list[Tensor], keep: Tensor | None, kmax: int) -> Bounds:
    """Torch counterpart of ``outer_topk`` (accelerators without Triton): chunked matmuls, running top-k.

    Each chunk is laid out [P, F, c] so the top-k reduces along the contiguous axis; chunks are large
    on accelerators (memory is cheap there, kernel launches are not).
    """
    f32 = lambda t: t.to(torch.float32)  # noqa: E731  the values the a-priori term covers, as on the CPU
    lhs_hi, lhs_lo = (torch.stack([f32(t) for pair in c for t in pair], -1) for c in (coef_hi, coef_lo))
    rhs = torch.stack([f32(t) for u in rows for t in (u.clamp(min=0), u.clamp(max=0))], 2)  # [Q, b, 2M, in]
    p, b, out = lhs_hi.shape[:3]
    per_chunk = CHUNK_ELEMENTS * (16 if rhs.device.type != "cpu" else 1)
    best_hi, best_lo = RunningTopK(kmax, True, dim=2), RunningTopK(kmax, False, dim=2)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32 would round far outside the a-priori term
    try:
        for sl in _chunks(b, 2 * p * out * rhs.shape[3], per_chunk):
            d_hi = torch.matmul(lhs_hi[:, sl], rhs[:, sl]).flatten(2).transpose(1, 2).clamp(min=0.0)
            d_lo = torch.matmul(lhs_lo[:, sl], rhs[:, sl]).flatten(2).transpose(1, 2).clamp(max=0.0)
            d_hi, d_lo = torch.nan_to_num(d_hi, nan=math.inf), torch.nan_to_num(d_lo, nan=-math.inf)  # [P, F, c]
            if keep is not None:
                d_hi = torch.where(keep[sl], d_hi, -math.inf)
                d_lo = torch.where(keep[sl], d_lo, math.inf)
            best_hi.add(d_hi)
            best_lo.add(d_lo)
    finally:
        torch.set_float32_matmul_precision(precision)
    return best_hi.values().transpose(1, 2), best_lo.values().transpose(1, 2)


def _topk_for(device: torch.device, memo: dict):
    """The fused kernel for the device: numba on the CPU (keeping the rows' layout in ``memo`` across
    the calls of one layer), Triton on CUDA, chunked torch ops elsewhere."""
    if device.type == "cpu":
        return partial(outer_topk, memo=memo)
    return topk_triton.outer_topk_triton if device.type == "cuda" and triton_support.available() else _streamed_topk


def _difference_coefs(clean: tuple, poisoned: tuple) -> tuple[list[Tensor], Coefs, Coefs]:
    """Coefficients of U~_i - U_i (hi) and L~_i - L_i (lo) over the union of both factors' rows.

    A row the clean and the poisoned factors share (labels poisoned, features not: the same tensor)
    is listed once, with the coefficient difference, so the kernel reads and multiplies it once.
    """
    (rows_c, lo_c, hi_c), (rows_p, lo_p, hi_p) = clean, poisoned
    rows, d_lo, d_hi = list(rows_p), list(lo_p), list(hi_p)
    minus = lambda a, b: (a[0] - b[0], a[1] - b[1])  # noqa: E731
    for row, c_lo, c_hi in zip(rows_c, lo_c, hi_c):
        hit = next((n for n, r in enumerate(rows_p) if r is row), None)
        if hit is None:
            rows.append(row)
            d_lo.append((-c_lo[0], -c_lo[1]))
            d_hi.append((-c_hi[0], -c_hi[1]))
        else:
            d_lo[hit], d_hi[hit] = minus(d_lo[hit], c_lo), minus(d_hi[hit], c_hi)
    return rows, d_lo, d_hi


def _linear_topk(lg: LayerGrads, adv: Adversary) -> Bounds:
    """Thm 3.3 / B.1 sums plus top-k for a linear layer without clipping, from sign-split coefficients.

    Per-sample differences U~_i - U_i are sign-split products over at most 4 input rows; their top-k
    runs in the fused CPU kernel (``outer_topk``) or by chunked matmuls on an accelerator, never as
    batch x |W| tensors in full. Returns the bounds without the a-priori rounding term (see
    ``_linear_error``).
    """
    c, pz = lg.clean, lg.poisoned if lg.poisoned is not None else lg.clean
    sq = lambda t: t[:, :, 0, :, 0]  # noqa: E731  [P, b, 1, r, 1] -> [P, b, r]
    rows_c, lo_c, hi_c = _sign_split_coefs(sq(c.g_lo), sq(c.g_hi), sq(c.x_lo), sq(c.x_hi), c.x_lo is c.x_hi)
    p = c.g_lo.shape[0]
    kmax = max(adv.k)
    if len(rows_c) == 1:  # exact input: the bounds are mid (x) x +- rad (x) |x| (Rump's form), two matmuls
        x = rows_c[0]
        g_mid, g_rad = (sq(c.g_hi) + sq(c.g_lo)) * 0.5, (sq(c.g_hi) - sq(c.g_lo)) * 0.5
        s_mid = shared_matmul(g_mid.transpose(1, 2), x).flatten(1)
        s_rad = abs_matmul_up(g_rad.transpose(1, 2), x).flatten(1)  # an upper bound: only widens
        sum_lo, sum_hi = s_mid - s_rad, s_mid + s_rad
    else:
        sum_lo, sum_hi = _factored_sum(lo_c, rows_c).flatten(1), _factored_sum(hi_c, rows_c).flatten(1)
    # per-sample differences in float32 (the caller's a-priori term covers their rounding), one budget
    # point at a time so that only one point's coefficients exist at once
    top_lo, top_hi = [], []  # per point: the sum of its own k largest (smallest) differences, [1, F]
    memo: dict = {}
    for q in range(p):
        pick = lambda t: t[q:q + 1] if t.shape[0] > 1 else t  # noqa: E731
        k = adv.k[q]
        if k == 0:  # not attacked
            top_lo.append(torch.zeros_like(sum_lo[:1]))
            top_hi.append(torch.zeros_like(sum_hi[:1]))
            continue
        point = lambda cs: [(a[q:q + 1], b[q:q + 1]) for a, b in cs]  # noqa: E731
        clean = ([pick(r) for r in rows_c], point(lo_c), point(hi_c))
        g_lo, g_hi = pick(sq(pz.g_lo)), pick(sq(pz.g_hi))
        if adv.moved[q]:
            poisoned = _sign_split_coefs(g_lo, g_hi, pick(sq(pz.x_lo)), pick(sq(pz.x_hi)), pz.x_lo is pz.x_hi)
        else:  # the poisoned inputs are the clean ones: share their rows (merged below), as when run alone
            rows_q = clean[0]
            poisoned = _sign_split_coefs(g_lo, g_hi, rows_q[0], rows_q[-1], len(rows_q) == 1)
        rows, d_lo, d_hi = _difference_coefs(clean, poisoned)
        topk = _topk_for(rows[0].device, memo)  # equal rows across points: laid out once
        with record_function("pcert::topk"):  # layouts and kernel (bench/profile_agt.py)
            t_hi, t_lo = topk(d_hi, d_lo, rows, adv.untrusted, k)  # exactly this point's k: summed as they are
        top_hi.append(t_hi.sum(1, dtype=sum_hi.dtype))
        top_lo.append(t_lo.sum(1, dtype=sum_lo.dtype))
    lo = sum_lo + torch.cat(top_lo)
    hi = sum_hi + torch.cat(top_hi)
    if lg.bias:
        g_lo, g_hi, pg_lo, pg_hi = sq(c.g_lo), sq(c.g_hi), sq(pz.g_lo), sq(pz.g_hi)
        d_hi = torch.nan_to_num(pg_hi - g_hi, nan=math.inf).clamp(min=0.0)
        d_lo = torch.nan_to_num(pg_lo - g_lo, nan=-math.inf).clamp(max=0.0)
        if adv.untrusted is not None:
            keep = adv.untrusted.view(1, -1, 1)
            d_hi = torch.where(keep, d_hi, -math.inf)
            d_lo = torch.where(keep, d_lo, math.inf)
        top_lo, top_hi = RunningTopK(kmax, False), RunningTopK(kmax, True)
        top_lo.add(d_lo)
        top_hi.add(d_hi)
        lo = torch.cat((lo, g_lo.sum(1) + _select_sum(top_lo.values(), adv.k, False)), 1)
        hi = torch.cat((hi, g_hi.sum(1) + _select_sum(top_hi.values(), adv.k, True)), 1)
    return lo, hi


def _batch_rounding(own_terms: int, own_factor: float, run_terms: int, dtype: torch.dtype) -> float:
    """Relative a-priori term (times sum_i |G_i||X_i|) of a batch sum of weight gradients.

    Our own evaluation in ``dtype`` (own_factor * gamma_{own_terms}, in dtype's true unit roundoff)
    and, when a coarser dtype is covered (cover="all"), any run in it: its batch sum of rounded
    per-sample products over run_terms = batch x positions, plus its 1/b loss scaling, errs by at
    most gamma_{run_terms + 4} sum_i |G_i||X_i| in any summation order.
    """
    u = torch.finfo(dtype).eps / 2
    own = own_factor * own_terms * u / (1 - own_terms * u)
    return own + (gamma(run_terms + 4, dtype) if covers_coarser(dtype) else 0.0)


def _linear_error(lg: LayerGrads, adv: Adversary) -> Tensor:
    """A-priori rounding term of ``_linear_topk``, [P, F] (0 for points without a top-k).

    Float64: the batch sums (<= 8 b terms, each within 2 |G_i||X_i|; for an exact input the
    midpoint-radius form, equal to the sign-split form in exact arithmetic, with its rounded
    midpoint and radius), the top-k totals and their addition; sum_i |G_i||X_i| <= b Gmax (x) Xmax
    (maxima over the batch, clean plus poisoned), or the sum itself (one matmul) when coarser
    rounding is covered (cover="all", see ``_batch_rounding``), where the term is not negligible.
    Float32: each kept per-sample difference (<= 8 products from rounded factors, within
    2 |G_i||X_i|) plus underflow;
    only the k kept values enter the bound, and the computed top-k sum is at least the sum of the
    computed values of the exact top-k set, so k times the largest per-sample error suffices.
    """
    fs = [lg.clean] + ([lg.poisoned] if lg.poisoned is not None else [])
    batch_max = lambda lo, hi: torch.maximum(hi.amax(1), -lo.amin(1))[:, 0, :, 0]  # noqa: E731  max_i |.|
    g_max = sum(batch_max(f.g_lo, f.g_hi) for f in fs)  # [P, out]
    x_max = sum(batch_max(f.x_lo, f.x_hi) for f in fs)  # [P|1, in]
    gx = (g_max.unsqueeze(-1) * x_max.unsqueeze(-2)).flatten(1)  # [P, out * in]
    b, dtype = lg.clean.g_lo.shape[1], lg.clean.g_lo.dtype
    rel = _batch_rounding(8 * b + max(adv.k) + 16, 4, b, dtype)
    if covers_coarser(dtype):  # the coarse term is not negligible: the exact sum
        err = rel * _mag_sum(lg)
    else:
        err = rel * b * (torch.cat((gx, g_max), 1) if lg.bias else gx)
    k = constant(tuple(adv.k), gx.dtype, gx.device).view(-1, 1)
    # float32 products of the kept values, and their underflow: 8 products, each flushed (< 2**-126)
    # or gradual, and the conversion of tiny inputs (< 2**-150 times the other factor)
    tiny = 8 * (2.0 ** -125 + 2.0 ** -149 * torch.maximum(g_max.amax(), x_max.amax()))
    f32 = k * (gamma(8 + 2, torch.float32) * 2 * gx + tiny)
    err = err + (torch.cat((f32, torch.zeros_like(g_max)), 1) if lg.bias else f32)
    return err * (k > 0)


def _nominal_sum(lg: LayerGrads) -> Tensor:
    g, x = lg.nominal
    w = torch.matmul(_arrange(g), _arrange(x).transpose(-1, -2)).flatten(1)[0]
    return torch.cat([w, g.sum((1, 4)).flatten()]) if lg.bias else w


def descent_sums(layers: list[LayerGrads], adv: Adversary) -> tuple[list[Bounds], list[Tensor]]:
    """Bounds of sum_i (clipped) gradient over every poisoned batch, and the nominal sum, per layer.

    Returns per layer ([P, F] lower, [P, F] upper) and the nominal [F]; F = weight numel + bias.
    Points with a top-k sum the per-sample bounds whose differences it ranks (linear layers: the
    sign-split products as matmuls; other layers and clipped ones: streamed); points without one
    use interval matmuls (Rump's form intersected with the sign split), as do all at zero budget.
    """
    ref = layers[0].clean.g_lo
    p, b, dtype = ref.shape[0], ref.shape[1], ref.dtype
    kmax = max(adv.k)
    kappa = adv.clip
    n_params = sum(lg.clean.g_lo.shape[2] * lg.clean.g_lo.shape[3] * (lg.clean.x_lo.shape[3] + (1 if lg.bias else 0))
                   for lg in layers)
    chunks = _chunks(b, 2 * p * n_params)
    unb = constant(tuple(adv.unbounded), torch.bool, ref.device).view(-1, 1, 1)
    untrusted = adv.untrusted
    scales = _norm_scales(layers, chunks, kappa, n_params) if kappa is not None and adv.clip_method == "norm" else None

    def clip(lo: Tensor, hi: Tensor, which: int, sl: slice) -> Bounds:
        if kappa is None:
            return lo, hi
        if scales is None:
            return lo.clamp(-kappa, kappa), hi.clamp(-kappa, kappa)
        s_lo, s_hi = scales[which]
        return _scale_clip(lo, hi, (s_lo[:, sl], s_hi[:, sl]), kappa)

    bounds: list[Bounds] = []
    nominal: list[Tensor] = []
    # points without a top-k keep the matmul sums, so a sweep equals separate runs per point
    attacked = constant(tuple(k > 0 for k in adv.k), torch.bool, ref.device).view(-1, 1)
    for lg in layers:
        single = lg.clean.g_lo.shape[-1] == 1 and lg.clean.g_lo.shape[2] == 1
        # matmul sums only for points without a top-k: with one, Thm 3.3 needs the sum of the very
        # per-sample bounds whose differences it ranks (a tighter sum, e.g. Rump's product intersected
        # with the sign split, can drop a poisoned sample's own excess of its clean bound)
        rump = _idle_sums(lg.clean, lg.bias, adv.k) if kappa is None else None
        if kappa is None:
            nominal.append(_nominal_sum(lg))
        if kappa is None and kmax == 0:
            bounds.append(rump)
            continue
        if kappa is None and single:
            lo, hi = _linear_topk(lg, adv)
            err = _linear_error(lg, adv)
            if rump is not None:
                lo, hi = torch.where(attacked, lo, rump[0]), torch.where(attacked, hi, rump[1])
            bounds.append(outward(lo - err, hi + err))
            continue
        best_hi, best_lo = RunningTopK(kmax, True), RunningTopK(kmax, False)
        sum_lo = sum_hi = sum_nom = 0.0
        for sl in chunks:
            c_lo, c_hi = clip(*_dense(lg.clean, sl, lg.bias), 0, sl)
            sum_lo, sum_hi = sum_lo + c_lo.sum(1), sum_hi + c_hi.sum(1)
            if kappa is not None:
                nd = _dense_point(*lg.nominal, sl, lg.bias)
                nd = nd.clamp(-kappa, kappa) if scales is None else nd * scales[2][:, sl]
                sum_nom = sum_nom + nd.sum(1)[0]
            if kmax == 0:
                continue
            if lg.poisoned is not None:
                p_lo, p_hi = clip(*_dense(lg.poisoned, sl, lg.bias), 1, sl)
            else:
                p_lo, p_hi = c_lo, c_hi
            if kappa is not None:
                p_lo = torch.where(unb, -kappa, p_lo)
                p_hi = torch.where(unb, kappa, p_hi)
            # clamped at 0: the adversary may always leave a point alone
            d_hi = torch.nan_to_num(p_hi - c_hi, nan=math.inf).clamp(min=0.0)
            d_lo = torch.nan_to_num(p_lo - c_lo, nan=-math.inf).clamp(max=0.0)
            if untrusted is not None:
                keep = untrusted[sl].view(1, -1, 1)
                d_hi = torch.where(keep, d_hi, -math.inf)
                d_lo = torch.where(keep, d_lo, math.inf)
            best_hi.add(d_hi)
            best_lo.add(d_lo)
        if kappa is not None:
            nominal.append(sum_nom)
            lo, hi = sum_lo, sum_hi
            streamed = torch.ones_like(attacked)
        else:  # the streamed sums where a top-k is added to them, the matmul sums elsewhere
            lo, hi = (sum_lo, sum_hi) if rump is None else (torch.where(attacked, sum_lo, rump[0]),
                                                             torch.where(attacked, sum_hi, rump[1]))
            streamed = attacked
        if kmax > 0:
            lo = lo + _select_sum(best_lo.values(), adv.k, False)
            hi = hi + _select_sum(best_hi.values(), adv.k, True)
        # rounding of the streamed per-sample values, running sums and top-k sums
        positions = b * lg.clean.g_lo.shape[-1]
        err = _batch_rounding(2 * positions + kmax + 16, 2, positions, dtype) * _mag_sum(lg) * streamed
        bounds.append(outward(lo - err, hi + err))
    return bounds, nominal


def _norm_scales(layers: list[LayerGrads], chunks: list[slice], kappa: float, n_params: int):
    """Bounds of the per-sample norm-clipping factors min(1, kappa/||g_i||): clean, poisoned, nominal."""
    ref = layers[0].clean.g_lo
    p, b, dtype = ref.shape[0], ref.shape[1], ref.dtype
    sq = [torch.zeros(p, b, dtype=dtype, device=ref.device) for _ in range(4)]
    nsq = torch.zeros(1, b, dtype=layers[0].nominal[0].dtype, device=ref.device)
    for sl in chunks:
        for lg in layers:
            for j, f in enumerate((lg.clean, lg.poisoned)):
                if f is not None:
                    lo, hi = _dense(f, sl, lg.bias)
                    sq[2 * j][:, sl] += _mig_sq(lo, hi)
                    sq[2 * j + 1][:, sl] += (_mag(lo, hi) ** 2).sum(-1)
            nsq[:, sl] += (_dense_point(*lg.nominal, sl, lg.bias) ** 2).sum(-1)
    nominal = torch.clamp(kappa / torch.sqrt(nsq), max=1.0).unsqueeze(-1)
    return (_norm_scale(sq[0], sq[1], kappa, n_params), _norm_scale(sq[2], sq[3], kappa, n_params), nominal)
