"""Descent-direction bounds over a batch: AGT Thm 3.3 (bounded) and Thm B.1 (unbounded, clipped).

Both have the form  sum_i U_i + SEMax_k{ U~_i - U_i }  (upper; lower with SEMin), where U_i bounds
the clean per-sample gradient over the parameter box and U~_i the poisoned one; an unbounded
adversary replaces a point by anything, i.e. U~_i = kappa after clipping (Thm B.1 rewritten:
SEMax_{b-n}{U} + n kappa = sum U + SEMax_n{kappa - U}). Any per-sample bounds U_i work as long
as the sum and the differences use the same ones. Without clipping the sums are matmuls over
(batch x positions): Rump's form, or for linear layers the sign-split products whose per-sample
differences (float32, own a-priori term) go through a fused top-k kernel (topk_kernel.py). Other
layers stream the batch in chunks with a running torch.topk (memory ~(k + chunk) x |theta| per
budget point); differences are clamped at 0, since
the adversary may leave a point alone. Floating-point error of everything computed outside
interval.py is bounded a priori by gamma * sum_i |G_i| |X_i|^T (one more matmul).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pcert.compiler.graph import Layer
from pcert.runtime.bounds.interval import Bounds, gamma, matmul_bounds, mid_rad, outward, unit_roundoff

from .backward import Factors
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


def _dense(f: Factors, sl: slice, bias: bool) -> Bounds:
    """Per-sample bounds [P, c, F] of the samples in ``sl`` (weights flattened, then bias).

    Linear layers (L = 1) use the exact interval product (corner min/max); convolutions use
    Rump's midpoint-radius product per sample (at most 1.5x wider, but one batched matmul).
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
        gm, gr = mid_rad(g_lo, g_hi)
        xm, xr = (x_lo, None) if exact_x else mid_rad(x_lo, x_hi)
        mm = lambda u, v: u @ v.transpose(-1, -2)  # noqa: E731
        mid = mm(gm, xm)
        rad = mm(gr, xm.abs()) if xr is None else mm(gm.abs(), xr) + mm(gr, xm.abs() + xr)
        lo, hi = mid - rad, mid + rad
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
    kk = torch.tensor(k, device=best.device)
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


def _split_factors(g_lo: Tensor, g_hi: Tensor, x_lo: Tensor, x_hi: Tensor, exact_x: bool):
    """Per-sample product bounds of g (x) x as sums of outer products: lo_i = A_i B_lo_i^T, hi_i = A_i B_hi_i^T.

    The sign split of both factors (see interval._sign_split_bounds) gives rank 4 (rank 2 for an
    exact x); it is the exact interval product wherever g_o or x_j is sign-definite.
    g [P, b, out], x [P|1, b, in]; returns A [P, b, out, R], B_lo and B_hi [P|1, b, in, R].
    """
    xp_l, xp_h, xn_l, xn_h = x_lo.clamp(min=0), x_hi.clamp(min=0), x_lo.clamp(max=0), x_hi.clamp(max=0)
    if exact_x:
        return torch.stack((g_lo, g_hi), -1), torch.stack((xp_l, xn_l), -1), torch.stack((xn_l, xp_l), -1)
    a = torch.stack((g_lo.clamp(min=0), g_hi.clamp(min=0), g_lo.clamp(max=0), g_hi.clamp(max=0)), -1)
    return a, torch.stack((xp_l, xn_l, xp_h, xn_h), -1), torch.stack((xn_h, xp_h, xn_l, xp_l), -1)


def _factored_sum(a: Tensor, bf: Tensor) -> Tensor:
    """sum_i A_i B_i^T over the batch and the rank axis, as one matmul: [P, out, in]."""
    p, b, o, r = a.shape
    lhs = a.permute(0, 2, 1, 3).reshape(p, o, b * r)
    rhs = bf.permute(0, 2, 1, 3).reshape(bf.shape[0], bf.shape[2], b * r)
    return torch.matmul(lhs, rhs.transpose(-1, -2))


def _streamed_topk(lhs: Tensor, rhs_hi: Tensor, rhs_lo: Tensor, keep: Tensor | None, kmax: int) -> Bounds:
    """Torch counterpart of ``outer_topk`` (GPU): per-sample differences by chunked matmuls, running top-k.

    Each chunk is laid out [P, F, c] so the top-k reduces along the contiguous axis; chunks are large
    on accelerators (memory is cheap there, kernel launches are not).
    """
    p, b, out = lhs.shape[:3]
    per_chunk = CHUNK_ELEMENTS * (16 if lhs.device.type != "cpu" else 1)
    best_hi, best_lo = RunningTopK(kmax, True, dim=2), RunningTopK(kmax, False, dim=2)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32 would round far outside the a-priori term
    try:
        for sl in _chunks(b, 2 * p * out * rhs_hi.shape[3], per_chunk):
            left = lhs[:, sl]
            d_hi = torch.matmul(left, rhs_hi[:, sl]).flatten(2).transpose(1, 2).clamp(min=0.0)
            d_lo = torch.matmul(left, rhs_lo[:, sl]).flatten(2).transpose(1, 2).clamp(max=0.0)
            d_hi, d_lo = torch.nan_to_num(d_hi, nan=math.inf), torch.nan_to_num(d_lo, nan=-math.inf)  # [P, F, c]
            if keep is not None:
                d_hi = torch.where(keep[sl], d_hi, -math.inf)
                d_lo = torch.where(keep[sl], d_lo, math.inf)
            best_hi.add(d_hi)
            best_lo.add(d_lo)
    finally:
        torch.set_float32_matmul_precision(precision)
    return best_hi.values().transpose(1, 2), best_lo.values().transpose(1, 2)


def _linear_topk(lg: LayerGrads, adv: Adversary) -> Bounds:
    """Thm 3.3 / B.1 sums plus top-k for a linear layer without clipping, from factored bounds.

    Per-sample differences U~_i - U_i are rank <= 8 products of the sign-split factors; their top-k
    runs in the fused CPU kernel (``outer_topk``) or by chunked matmuls on an accelerator, never as
    batch x |W| tensors in full.
    """
    c, pz = lg.clean, lg.poisoned if lg.poisoned is not None else lg.clean
    sq = lambda t: t[:, :, 0, :, 0]  # noqa: E731  [P, b, 1, r, 1] -> [P, b, r]
    a_c, blo_c, bhi_c = _split_factors(sq(c.g_lo), sq(c.g_hi), sq(c.x_lo), sq(c.x_hi), c.x_lo is c.x_hi)
    p, b, out = a_c.shape[:3]
    kmax = max(adv.k)
    sum_lo = _factored_sum(a_c, blo_c).flatten(1)
    sum_hi = _factored_sum(a_c, bhi_c).flatten(1)
    # per-sample differences in float32 (the caller's a-priori term covers their rounding), one budget
    # point at a time so that only one point's [b, R, in] factors exist at once; the poisoned factors
    # only feed them, so they are split in float32 directly (clamps commute with rounding)
    clean_rhs = [bc.to(torch.float32).transpose(-1, -2) for bc in (bhi_c, blo_c)]  # [P|1, b, R, in]
    tops, mags = [], []
    for q in range(p):
        pick = lambda t: t[q:q + 1] if t.shape[0] > 1 else t  # noqa: E731
        f32 = lambda t: pick(sq(t)).to(torch.float32)  # noqa: E731
        a_p, blo_p, bhi_p = _split_factors(f32(pz.g_lo), f32(pz.g_hi), f32(pz.x_lo), f32(pz.x_hi), pz.x_lo is pz.x_hi)
        lhs = torch.cat((a_p, -a_c[q:q + 1].to(torch.float32)), -1)
        rhs = [torch.cat((bp.transpose(-1, -2), pick(bc)), -2)
               for bp, bc in zip((bhi_p, blo_p), clean_rhs)]  # [1, b, R~ + R, in]
        del a_p, blo_p, bhi_p
        topk = outer_topk if lhs.device.type == "cpu" else _streamed_topk
        tops.append(topk(lhs, *rhs, adv.untrusted, kmax))
        mags.append(sum(torch.maximum(t.amax(), -t.amin()) for t in (lhs, *rhs)).to(sum_lo.dtype))
    top_hi, top_lo = torch.cat([t[0] for t in tops]), torch.cat([t[1] for t in tops])
    # float32 underflow, summed over the batch: R products per sample, each flushed (< 2**-126) or
    # gradual, and the conversion of tiny inputs (< 2**-150 times the other factor)
    tiny = b * lhs.shape[-1] * (2.0 ** -125 + 2.0 ** -149 * torch.stack(mags).amax())
    lo = sum_lo + _select_sum(top_lo.to(sum_lo.dtype), adv.k, False) - tiny
    hi = sum_hi + _select_sum(top_hi.to(sum_hi.dtype), adv.k, True) + tiny
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


def _nominal_sum(lg: LayerGrads) -> Tensor:
    g, x = lg.nominal
    w = torch.matmul(_arrange(g), _arrange(x).transpose(-1, -2)).flatten(1)[0]
    return torch.cat([w, g.sum((1, 4)).flatten()]) if lg.bias else w


def descent_sums(layers: list[LayerGrads], adv: Adversary) -> tuple[list[Bounds], list[Tensor]]:
    """Bounds of sum_i (clipped) gradient over every poisoned batch, and the nominal sum, per layer.

    Returns per layer ([P, F] lower, [P, F] upper) and the nominal [F]; F = weight numel + bias.
    Without clipping, sums are interval matmuls (Rump's form; for linear layers with a top-k the
    sign-split products, consistent with the per-sample differences); with clipping the clipped
    per-sample bounds are streamed and summed.
    """
    ref = layers[0].clean.g_lo
    p, b, dtype = ref.shape[0], ref.shape[1], ref.dtype
    kmax = max(adv.k)
    kappa = adv.clip
    n_params = sum(lg.clean.g_lo.shape[2] * lg.clean.g_lo.shape[3] * (lg.clean.x_lo.shape[3] + (1 if lg.bias else 0))
                   for lg in layers)
    chunks = _chunks(b, 2 * p * n_params)
    unb = torch.tensor(adv.unbounded, device=ref.device).view(-1, 1, 1)
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
    attacked = (torch.tensor(adv.k, device=ref.device) > 0).view(-1, 1)
    for lg in layers:
        single = lg.clean.g_lo.shape[-1] == 1 and lg.clean.g_lo.shape[2] == 1
        needs_rump = kappa is None and not (single and bool(attacked.all()))
        rump = _sum_bounds(lg.clean, lg.bias) if needs_rump else None
        if kappa is None:
            nominal.append(_nominal_sum(lg))
        if kappa is None and kmax == 0:
            bounds.append(rump)
            continue
        if kappa is None and single:
            lo, hi = _linear_topk(lg, adv)
            if rump is not None:
                lo, hi = torch.where(attacked, lo, rump[0]), torch.where(attacked, hi, rump[1])
            # float64 sums and top-k totals, plus the float32 per-sample differences (rank <= 8, each term
            # within 2 |G||X|; their errors summed over the whole batch)
            rel = gamma(8 * b + kmax + 16, dtype) * 4 + gamma(8 + 2, torch.float32) * 2
            err = rel * _mag_sum(lg) * attacked
            bounds.append(outward(lo - err, hi + err))
            continue
        best_hi, best_lo = RunningTopK(kmax, True), RunningTopK(kmax, False)
        sum_lo = sum_hi = sum_nom = 0.0
        for sl in chunks:
            c_lo, c_hi = clip(*_dense(lg.clean, sl, lg.bias), 0, sl)
            if kappa is not None:
                sum_lo, sum_hi = sum_lo + c_lo.sum(1), sum_hi + c_hi.sum(1)
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
        else:
            lo, hi = rump
            streamed = attacked
        if kmax > 0:
            lo = lo + _select_sum(best_lo.values(), adv.k, False)
            hi = hi + _select_sum(best_hi.values(), adv.k, True)
        # rounding of the streamed per-sample values, running sums and top-k sums
        err = gamma(2 * b * lg.clean.g_lo.shape[-1] + kmax + 16, dtype) * _mag_sum(lg) * 2 * streamed
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
