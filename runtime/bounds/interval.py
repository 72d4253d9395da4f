"""Sound interval arithmetic on torch tensors (AGT App. C), in any float dtype.

Every primitive returns bounds that contain (i) the exact real result for every input in the
boxes and (ii) any IEEE evaluation of the same operation on inputs from the boxes, in any
summation order (so a plain float32 training run on points inside the boxes stays inside).
Matrix products use Rump's midpoint-radius form plus an a-priori rounding term
``2 * gamma_{k+2} * (|x_mid| + x_rad)(|W_mid| + W_rad)`` (Higham's gamma_k = k u / (1 - k u):
one gamma for our evaluation of the midpoint product, one for any other evaluation); element-wise
results are widened outward by one ulp (rounding is monotone, so one ulp covers both).
NaN never survives: a NaN lower bound becomes -inf and a NaN upper bound +inf.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from pcert.runtime.constants import constant

Bounds = tuple[Tensor, Tensor]


_COVER = {"u": 0.0, "tiny": 0.0, "max": math.inf}


@contextmanager
def covering(dtype: torch.dtype):
    """Inside this block bounds also contain every evaluation in the (coarser) ``dtype``.

    Used when bounds run in float64 but the training runs they must contain run in float32:
    every a-priori rounding term then uses float32's unit roundoff, and one-ulp outward rounding
    widens by float32's relative rounding error as well.
    """
    old = dict(_COVER)
    _COVER["u"] = max(old["u"], torch.finfo(dtype).eps / 2)
    _COVER["tiny"] = max(old["tiny"], torch.finfo(dtype).tiny)
    _COVER["max"] = min(old["max"], torch.finfo(dtype).max)
    try:
        yield
    finally:
        _COVER.update(old)


def unit_roundoff(dtype: torch.dtype) -> float:
    return max(torch.finfo(dtype).eps / 2, _COVER["u"])


def smallest_normal(dtype: torch.dtype) -> float:
    """The unit of absolute underflow terms: ``dtype``'s smallest normal, or the covered dtype's."""
    return max(torch.finfo(dtype).tiny, _COVER["tiny"])


def covers_coarser(dtype: torch.dtype) -> bool:
    """Inside ``covering`` of a dtype coarser than ``dtype``: margins must also hold for its runs."""
    return _COVER["u"] > torch.finfo(dtype).eps / 2


def gamma(k: int, dtype: torch.dtype) -> float:
    """Higham's gamma_k: relative error bound of a length-k dot product or sum."""
    ku = k * unit_roundoff(dtype)
    return math.inf if ku >= 0.5 else ku / (1.0 - ku)


def sanitize(lo: Tensor, hi: Tensor) -> Bounds:
    """Replace NaN by the infinite side, so NaN can never make a bound look tight."""
    inf = math.inf
    return (torch.nan_to_num(lo, nan=-inf, posinf=inf, neginf=-inf),
            torch.nan_to_num(hi, nan=inf, posinf=inf, neginf=-inf))


def outward(lo: Tensor, hi: Tensor) -> Bounds:
    """Widen by one ulp each way (covers one rounding of each end point); NaN -> infinite side, and so
    is an end on the wrong infinity (a lower end at +inf, an upper at -inf): an overflow along the
    way (a product or partial sum beyond the range, inf - finite) says nothing about a finite result."""
    inf = math.inf
    if covers_coarser(lo.dtype):  # and a covered run beyond its dtype's range holds an infinity
        r, t, big = 2 * _COVER["u"], _COVER["tiny"], _COVER["max"]
        lo, hi = lo - (lo.abs() * r + t), hi + (hi.abs() * r + t)
        lo, hi = torch.where(lo < -big, -inf, lo), torch.where(hi > big, inf, hi)
    lo = torch.nan_to_num(lo, nan=-inf, posinf=-inf, neginf=-inf)
    hi = torch.nan_to_num(hi, nan=inf, posinf=inf, neginf=inf)
    return down(lo), up(hi)


def down(t: Tensor) -> Tensor:
    """The next float below each element (one ulp toward -inf)."""
    return torch.nextafter(t, constant(-math.inf, t.dtype, t.device))


def up(t: Tensor) -> Tensor:
    """The next float above each element (one ulp toward +inf)."""
    return torch.nextafter(t, constant(math.inf, t.dtype, t.device))


def widen(lo: Tensor, hi: Tensor, rel: float, absolute: float = 0.0) -> Bounds:
    """Widen by ``rel * |end| + absolute`` (plus one ulp): for library functions with a few ulp error."""
    tiny = torch.finfo(lo.dtype).tiny
    return outward(lo - (lo.abs() * rel + (absolute + tiny)), hi + (hi.abs() * rel + (absolute + tiny)))


def round_out(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> Bounds:
    """Round bounds to ``dtype`` without losing containment (one ulp outward where rounding went inward)."""
    if lo.dtype == dtype and hi.dtype == dtype:
        return lo, hi
    lo_d, hi_d = lo.to(dtype), hi.to(dtype)
    lo_d = torch.where(lo_d.to(lo.dtype) > lo, down(lo_d), lo_d)
    hi_d = torch.where(hi_d.to(hi.dtype) < hi, up(hi_d), hi_d)
    return lo_d, hi_d


def real_radius(eps: Tensor) -> Tensor:
    """A float64 radius at least the real eps a stored (rounded, within u * eps) decimal budget stands for."""
    return eps * (1 + 4 * torch.finfo(torch.float64).eps)


def input_box(x: Tensor, eps: Tensor | float, dtype: torch.dtype | None = None) -> Bounds:
    """[x - eps, x + eps] around finite data x, containing the real box: computed in float64 with
    eps's own rounding (a decimal budget is stored to within u * eps) and the subtraction's covered,
    then rounded outward to ``dtype`` (default x's). Where eps = 0 the box is x itself, exactly."""
    x64 = x.to(torch.float64)
    e_host = torch.as_tensor(eps, dtype=torch.float64, device="cpu")  # a few budgets: tested on the host
    e = constant(tuple(e_host.flatten().tolist()), torch.float64, x.device).view(e_host.shape)
    r = real_radius(e)
    lo, hi = x64 - r, x64 + r
    torch.nextafter(lo, constant(-math.inf, lo.dtype, lo.device), out=lo)  # the subtraction's rounding
    torch.nextafter(hi, constant(math.inf, hi.dtype, hi.device), out=hi)  # (no NaN: x is finite)
    if not bool((e_host > 0).all()):
        lo, hi = torch.where(e > 0, lo, x64), torch.where(e > 0, hi, x64)
    return round_out(lo, hi, dtype or x.dtype)


def mid_rad(lo: Tensor, hi: Tensor) -> Bounds:
    """Midpoint and a radius rounded up so that [mid - rad, mid + rad] contains [lo, hi]; a point
    interval keeps its value as midpoint (halving an odd subnormal would round it away)."""
    mid = lo * 0.5 + hi * 0.5
    rad = torch.maximum(hi - mid, mid - lo)
    point = hi == lo
    return torch.where(point, lo, mid), torch.where(point, torch.zeros_like(rad), up(rad))


def _abs_terms(wm: Tensor, wr: Tensor | None, g: float) -> tuple[Tensor, Tensor]:
    """Weights A (against |x_mid|) and B (against x_rad) of the radius product, error term folded in."""
    wa = wm.abs()
    if wr is None:
        return wa * g, wa * (1.0 + g)
    s = wa + wr
    return wr + s * g, s * (1.0 + g)


def shared_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for a [(1|P), N, K] (or [N, K]) and b [(1|P), K, M] where one side is shared across the other's
    budget axis: one GEMM with that axis folded into the other side's rows or columns. torch.matmul
    would copy the shared side once per budget point and run P smaller GEMMs (a 5-point sweep's
    784-128-10 input layer: 127 -> 81 ms in float64)."""
    if a.dim() == 2 and b.dim() == 3:
        a = a.unsqueeze(0)
    if a.dim() == 3 and b.dim() == 3 and a.shape[0] != b.shape[0]:
        if a.shape[0] == 1:
            p, k, m = b.shape
            out = torch.matmul(a[0], b.transpose(0, 1).reshape(k, p * m))  # [N, P M]
            return out.view(-1, p, m).transpose(0, 1).contiguous()
        if b.shape[0] == 1:
            p, n, k = a.shape
            return torch.matmul(a.reshape(p * n, k), b[0]).view(p, n, -1)
    return torch.matmul(a, b)


_FAST_RADIUS_MACS = 1 << 24  # float64 radius products of at least this many multiply-adds run in float32 (CPU)
_TINY32 = 2.0 ** -126  # float32's smallest normal: covers any flush to zero or gradual underflow


def abs_matmul_up(u: Tensor, v: Tensor) -> Tensor:
    """An upper bound of |u| @ |v| for u [..., n, k] and v [..., k, m] (the radius products).

    Large float64 products on the CPU run in float32, at about three times float64's rate. Rounded
    to nearest, |u| <= (fl|u| + t) / (1 - e) element-wise (e = 2^-24; t = 2^-126 covers underflow),
    and a float32 sum of k non-negative products errs by at most gamma_k of its exact value plus
    2 k t (underflow of each product and partial sum), so
      |u| @ |v| <= (fl(fl|u| @ fl|v|) + 2 k t + k t (max fl|u| + max fl|v| + t)) / ((1 - gamma_k) (1 - e)^2).
    The result is then at most ~gamma_k(float32) (5e-5 at k = 784) above the float64 product, and it
    only ever widens a radius. inf * 0 gives NaN, which the callers' outward rounding turns into the
    infinite side. Smaller products, other devices (TF32 could round far more) and other dtypes
    multiply as they are.
    """
    k = u.shape[-1]
    if (u.dtype != torch.float64 or u.device.type != "cpu"
            or u.numel() * v.shape[-1] < _FAST_RADIUS_MACS):
        return shared_matmul(u.abs(), v.abs())
    u32, v32 = u.to(torch.float32).abs_(), v.to(torch.float32).abs_()
    s = shared_matmul(u32, v32).to(torch.float64)
    e = 2.0 ** -24
    scale = (1.0 + 1e-12) / ((1.0 - gamma(k, torch.float32)) * (1.0 - e) ** 2)  # 1e-12: this line's own rounding
    big = float(torch.maximum(u32.amax(), v32.amax()))  # both non-empty: the product is large
    absolute = k * _TINY32 * (2.0 + 2.0 * big + _TINY32)
    return s * scale + absolute * scale


def _finish(mid: Tensor, rad: Tensor, k: int) -> Bounds:
    """Inflate the computed radius for its own rounding (a length-2k nonnegative sum), then round out."""
    dtype = mid.dtype
    rad = rad * (1.0 + 2.0 * gamma(2 * k + 4, dtype)) + (k + 4) * torch.finfo(dtype).tiny
    return outward(mid - rad, mid + rad)


def _split(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor | None]:
    """Midpoint/radius; a point interval (``lo is hi``) gets no radius tensor, saving a product."""
    if lo is hi:
        return lo, None
    return mid_rad(lo, hi)


def _bias_terms(b_lo: Tensor | None, b_hi: Tensor | None, g: float) -> tuple[Tensor | None, Tensor | None]:
    if b_lo is None:
        return None, None
    bm, br = _split(b_lo, b_hi)
    bras = bm.abs() * g if br is None else br + (bm.abs() + br) * g
    return bm, bras


def matmul_bounds(x_lo: Tensor, x_hi: Tensor, w_lo: Tensor, w_hi: Tensor) -> Bounds:
    """Bounds of y = x @ W^T over the boxes; x [..., in], W [..., out, in], leading axes broadcast."""
    return linear_bounds(x_lo, x_hi, w_lo, w_hi, None, None)


def shifted_linear_bounds(y_lo: Tensor, y_hi: Tensor, w_lo: Tensor, w_hi: Tensor, radius: Tensor) -> Bounds:
    """Bounds of (x + d) @ W^T + b for every |d| <= radius, from bounds [y_lo, y_hi] of x @ W^T + b
    over the same parameter box: (x + d) W = x W + d W and |d W_o| <= radius * sum_j max|W[o, j]|.

    No product with the data: an input box around x (feature poisoning) costs one row sum. Within
    2 radius sum_j (W_hi - W_lo)[o, j] of the exact range (per term, the W that maximises x W may not
    maximise |W|). y [P, N, out], W [P, out, in], radius [P] (real radius, not yet rounded).
    """
    s = torch.maximum(w_lo.abs(), w_hi.abs()).sum(-1)  # [P, out]
    s = s * (1.0 + 2.0 * gamma(w_lo.shape[-1] + 2, s.dtype))  # the sum's rounding, and a run's on |d| |W|
    r = round_out(radius, radius, s.dtype)[1]  # rounded up: a radius below the dtype's range must not shrink
    shift = up(r.view(-1, 1, 1) * s.unsqueeze(1))
    return outward(y_lo - shift, y_hi + shift)


_SPLIT_CHUNK = 1 << 23  # input values per sign-split chunk (64 MB in float64)


def _split4(lo: Tensor, hi: Tensor) -> Tensor:
    """[lo+, hi+, lo-, hi-] along the last axis, written in place (no concatenation copy)."""
    n = lo.shape[-1]
    out = lo.new_empty(*lo.shape[:-1], 4 * n)
    for i, (t, side) in enumerate(((lo, "min"), (hi, "min"), (lo, "max"), (hi, "max"))):
        torch.clamp(t, **{side: 0.0}, out=out[..., i * n:(i + 1) * n])
    return out


def _sign_split_bounds(x_lo: Tensor, x_hi: Tensor, w_lo: Tensor, w_hi: Tensor) -> Bounds:
    """Bounds of x @ W^T from sign splits, as one matmul (no rounding terms: see linear_bounds).

    Writing x = x+ + x- and W = W+ + W- (Minkowski sums of non-negative and non-positive parts)
    makes every term's bound linear in the end points:
    lo = x+_lo W+_lo + x+_hi W-_lo + x-_lo W+_hi + x-_hi W-_hi, hi symmetric. Each term is exact
    when x_j or W_j is sign-definite (e.g. after a relu); the caller intersects with Rump's form.
    """
    c, d, e, f = w_lo.clamp(min=0), w_hi.clamp(min=0), w_lo.clamp(max=0), w_hi.clamp(max=0)
    w8 = torch.cat((torch.cat((c, e, d, f), -1), torch.cat((f, d, e, c), -1)), -2).transpose(-1, -2)
    x_lo, x_hi = torch.broadcast_tensors(x_lo, x_hi)
    pieces = [(x_lo, x_hi)]
    if x_lo.dim() > 1:  # row chunks: x4 stays ~_SPLIT_CHUNK values
        step = max(1, _SPLIT_CHUNK * x_lo.shape[-2] // max(1, 4 * x_lo.numel()))
        pieces = list(zip(x_lo.split(step, -2), x_hi.split(step, -2)))
    parts = [torch.matmul(_split4(lo, hi), w8) for lo, hi in pieces]
    y = parts[0] if len(parts) == 1 else torch.cat(parts, -2)
    out = w_lo.shape[-2]
    return y[..., :out], y[..., out:]


def linear_bounds(x_lo: Tensor, x_hi: Tensor, w_lo: Tensor, w_hi: Tensor,
                  b_lo: Tensor | None, b_hi: Tensor | None) -> Bounds:
    """Bounds of x @ W^T + b (bias [..., out] broadcast over the sample axis).

    Rump's midpoint-radius form (exact when either factor is a point); when both factors are
    intervals it is intersected with the sign-split bounds (exact for sign-definite x or W), or,
    where ``corner_matmul.applies`` (CPU; CUDA with Triton), replaced by the exact corner sums.
    """
    if x_lo is not x_hi and w_lo is not w_hi:
        from . import corner_matmul  # it builds on this module's primitives
        if corner_matmul.applies(x_lo, w_lo):
            return corner_matmul.corner_linear_bounds(x_lo, x_hi, w_lo, w_hi, b_lo, b_hi)
    k = x_lo.shape[-1] + 2
    g = 2.0 * gamma(k, x_lo.dtype)
    xm, xr = _split(x_lo, x_hi)
    wm, wr = _split(w_lo, w_hi)
    a, b = _abs_terms(wm, wr, g)
    wt = lambda t: t.transpose(-1, -2)  # noqa: E731
    mid = shared_matmul(xm, wt(wm))
    rad = abs_matmul_up(xm, wt(a))
    if xr is not None:
        rad = rad + abs_matmul_up(xr, wt(b))
    bm, brad = _bias_terms(b_lo, b_hi, g)
    if bm is not None:
        mid = mid + bm.unsqueeze(-2)
        rad = rad + brad.unsqueeze(-2)
    lo, hi = _finish(mid, rad, k)
    if xr is None or wr is None:  # Rump is exact when either factor is a point
        return lo, hi
    # both intervals: intersect with the sign-split bounds, whose rounding (4k-term sums, |terms|
    # <= 2 |x||W| per index) plus any other evaluation's is covered by err
    s_lo, s_hi = _sign_split_bounds(x_lo, x_hi, w_lo, w_hi)
    mag = torch.matmul(torch.maximum(x_lo.abs(), x_hi.abs()), wt(torch.maximum(w_lo.abs(), w_hi.abs())))
    err = mag * ((4 * gamma(4 * k + 2, x_lo.dtype) + g) * (1 + g)) + 4 * k * torch.finfo(x_lo.dtype).tiny
    if bm is not None:
        s_lo, s_hi = s_lo + b_lo.unsqueeze(-2), s_hi + b_hi.unsqueeze(-2)
        err = err + brad.unsqueeze(-2)
    s_lo, s_hi = outward(s_lo - err, s_hi + err)
    return torch.maximum(lo, s_lo), torch.minimum(hi, s_hi)


def _stack_p(x: Tensor, p: int, data_dims: int) -> Tensor:
    """[P, N, C, ...] or [N, C, ...] -> [N, P*C, ...] (the budget axis folded into channels)."""
    if x.dim() == data_dims:
        x = x.unsqueeze(0)
    x = x.expand(p, *x.shape[1:])
    return x.transpose(0, 1).reshape(x.shape[1], p * x.shape[2], *x.shape[3:])


def _unstack_p(y: Tensor, p: int) -> Tensor:
    """[N, P*C, ...] -> [P, N, C, ...]."""
    return y.reshape(y.shape[0], p, y.shape[1] // p, *y.shape[2:]).transpose(0, 1)


def conv2d_bounds(x_lo: Tensor, x_hi: Tensor, w_lo: Tensor, w_hi: Tensor,
                  b_lo: Tensor | None, b_hi: Tensor | None,
                  stride, padding, dilation, groups: int) -> Bounds:
    """Bounds of conv2d; x [N, C, H, W] or [P, N, C, H, W], W [P, oc, ic/groups, kh, kw], b [P, oc].

    The budget axis is folded into the channel axis (groups * P), so one conv call serves all
    sweep points.
    """
    p = w_lo.shape[0]
    k = w_lo.shape[2] * w_lo.shape[3] * w_lo.shape[4] + 2
    g = 2.0 * gamma(k, x_lo.dtype)
    xm, xr = _split(x_lo, x_hi)
    wm, wr = _split(w_lo, w_hi)
    a, b = _abs_terms(wm, wr, g)
    flat = lambda w: w.reshape(-1, *w.shape[2:])  # noqa: E731
    conv = lambda x, w: F.conv2d(_stack_p(x, p, 4), flat(w), None, stride, padding, dilation, groups * p)  # noqa: E731
    mid = conv(xm, wm)
    rad = conv(xm.abs(), a)
    if xr is not None:
        rad = rad + conv(xr, b)
    mid, rad = _unstack_p(mid, p), _unstack_p(rad, p)
    bm, brad = _bias_terms(b_lo, b_hi, g)
    if bm is not None:
        mid = mid + bm[:, None, :, None, None]
        rad = rad + brad[:, None, :, None, None]
    return _finish(mid, rad, k)


def conv2d_input_grad_bounds(g_lo: Tensor, g_hi: Tensor, w_lo: Tensor, w_hi: Tensor,
                             in_hw: tuple[int, int], stride, padding, dilation, groups: int) -> Bounds:
    """Bounds of dL/dx = conv_transpose2d(dL/dy, W) for a conv layer; g [P, N, oc, H', W']."""
    p = w_lo.shape[0]
    k = w_lo.shape[1] // groups * w_lo.shape[3] * w_lo.shape[4] + 2
    gm_, gr_ = mid_rad(g_lo, g_hi)
    wm, wr = _split(w_lo, w_hi)
    a, b = _abs_terms(wm, wr, 2.0 * gamma(k, g_lo.dtype))
    kh, kw = w_lo.shape[3], w_lo.shape[4]
    out_pad = tuple(
        in_hw[i] - ((g_lo.shape[3 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * ((kh, kw)[i] - 1) + 1)
        for i in range(2))
    flat = lambda w: w.reshape(-1, *w.shape[2:])  # noqa: E731
    tconv = lambda x, w: F.conv_transpose2d(_stack_p(x, p, 4), flat(w), None, stride, padding, out_pad,  # noqa: E731
                                            groups * p, dilation)
    mid = _unstack_p(tconv(gm_, wm), p)
    rad = _unstack_p(tconv(gm_.abs(), a) + tconv(gr_, b), p)
    return _finish(mid, rad, k)


def mul_bounds(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor) -> Bounds:
    """Element-wise product of two intervals (min/max of the four corner products)."""
    c = (a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi)
    c = [torch.nan_to_num(t, nan=0.0, posinf=math.inf, neginf=-math.inf) for t in c]  # 0 * inf: the 0 is exact
    lo = torch.minimum(torch.minimum(c[0], c[1]), torch.minimum(c[2], c[3]))
    hi = torch.maximum(torch.maximum(c[0], c[1]), torch.maximum(c[2], c[3]))
    return outward(lo, hi)


_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def activation_bounds(op: str, lo: Tensor, hi: Tensor) -> Bounds:
    """Bounds of a monotone activation (relu exact; sigmoid/tanh widened for library error)."""
    if op == "relu":
        return lo.clamp(min=0.0), hi.clamp(min=0.0)
    if op not in _RANGES:
        raise ValueError(f"unsupported activation {op!r}")
    fn = torch.sigmoid if op == "sigmoid" else torch.tanh
    u = unit_roundoff(lo.dtype)
    flo, fhi = widen(fn(lo), fn(hi), 8 * u, 2 * u)
    r0, r1 = _RANGES[op]
    return flo.clamp(r0, r1), fhi.clamp(r0, r1)


def activation_grad_bounds(op: str, lo: Tensor, hi: Tensor) -> Bounds:
    """Bounds of f'(z) for z in [lo, hi]; sigmoid'/tanh' are unimodal with their peak at 0.

    The absolute widening covers evaluations through the rounded activation (1 - s loses up to u).
    """
    if op == "relu":
        return (lo > 0).to(lo.dtype), (hi > 0).to(lo.dtype)
    if op == "sigmoid":
        d = lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))  # noqa: E731
        peak = 0.25
    elif op == "tanh":
        d = lambda z: 1 - torch.tanh(z) ** 2  # noqa: E731
        peak = 1.0
    else:
        raise ValueError(f"unsupported activation {op!r}")
    lo, hi = sanitize(lo, hi)
    dlo = torch.minimum(d(lo), d(hi))
    dhi = d(torch.clamp(torch.zeros_like(lo), lo, hi))
    u = unit_roundoff(lo.dtype)
    dlo, dhi = widen(dlo, dhi, 16 * u, 8 * u)
    return dlo.clamp(0.0, peak), dhi.clamp(0.0, peak)
