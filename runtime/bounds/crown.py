"""CROWN (Zhang et al. 2018) with interval parameters (AGT App. D, proof in App. I.5).

Every layer is bounded by back-substituting linear bounds from that layer to the input. The
parameters lie in boxes, so the equivalent weights (Lambda, Omega) are interval matrices; an
activation whose coefficient interval spans zero cannot pick its upper or lower relaxation, so it
is concretised to its interval [sigma(l), sigma(u)] (App. D).

Representation: activations are flattened per sample; flatten/reshape are identities on that
view and conv2d is its dense (exact) weight matrix, so back-substitution only ever sees
affine maps and element-wise activations. Lower bounds are upper bounds of the negated rows,
so one pass bounds both sides. Shapes: parameters carry a leading budget axis P, coefficients
are [P, N, R, n] (R = 2 x neurons of the bounded layer).

Float soundness: every interval product goes through the outward-rounded primitives of
``interval`` (Rump midpoint-radius plus an a-priori error term); sums of products use an
a-priori error term (``_sum_up``); accumulated constants are rounded up one ulp per addition;
relaxation intercepts are computed in float64 as the exact extremes of sigma(z) - a z over
[l, u] (whatever slope a the heuristic picked) with a margin of 64 float64 ulps of the
magnitudes involved (ulps of the covered dtype inside ``interval.covering``: a float32 run's
sigma(z) must satisfy the relaxation too), then rounded outward to the working dtype.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from pcert.compiler.graph import Layer, LayerGraph
from pcert.runtime.bounds.ibp import layer_bounds, param_index
from pcert.runtime.bounds.interval import activation_bounds, down, matmul_bounds, sanitize, unit_roundoff, up

ACTIVATIONS = ("relu", "sigmoid", "tanh")
RESHAPES = ("flatten", "reshape")
# elements of one coefficient tensor per chunk of samples (memory bound of full CROWN)
CHUNK_ELEMENTS = 1 << 22
_BISECT_STEPS = 30


# --------------------------------------------------------------------------- float helpers
def _mul_upper(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor) -> Tensor:
    """Upper end of the element-wise interval product (the only end back-substitution needs;
    cheaper than ``interval.mul_bounds``). NaN (0 * inf) is left for the final sanitize."""
    return up(torch.maximum(torch.maximum(a_lo * b_lo, a_lo * b_hi), torch.maximum(a_hi * b_lo, a_hi * b_hi)))


def _round_to(x64: Tensor, dtype: torch.dtype, upward: bool) -> Tensor:
    """Convert float64 to ``dtype`` rounding toward +inf (upward) or -inf."""
    r = x64.to(dtype)
    if upward:
        return torch.where(r.double() < x64, up(r), r)
    return torch.where(r.double() > x64, down(r), r)


def _sum_up(t: Tensor, dim: int = -1) -> Tensor:
    """Upper bound of the exact sum along ``dim``: float sum plus the a-priori bound
    gamma_{n-1} * sum|t| on its rounding error (with a factor-2 slack for rounding in the
    error term itself), whatever reduction order torch uses."""
    n = t.shape[dim]
    if n == 0:
        return t.sum(dim)
    eps = 2 * unit_roundoff(t.dtype)  # the covered dtype's (``interval.covering``): its runs' sums too
    return up(t.sum(dim) + t.abs().sum(dim) * (2.0 * n * eps))


# --------------------------------------------------------------------------- relaxations
def _fn(op: str):
    if op == "relu":
        return torch.relu, lambda z: (z > 0).to(z.dtype)
    if op == "sigmoid":
        return torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))
    if op == "tanh":
        return torch.tanh, lambda z: 1 - torch.tanh(z) ** 2
    raise ValueError(f"no linear relaxation for activation {op!r}")


def _s_upper_slope(op: str, l: Tensor, u: Tensor) -> Tensor:
    """CROWN's upper-line slope for an S-shaped activation (convex below 0, concave above):
    chord on the convex side, tangent at the midpoint on the concave side, and across 0 the
    tangent at d in [0, u] through (l, f(l)) (bisection), or the chord if none exists.
    Any slope is sound: the intercept is computed afterwards as an exact maximum."""
    f, df = _fn(op)
    width = u - l
    chord = torch.where(width > 0, (f(u) - f(l)) / torch.where(width > 0, width, 1.0), df(l))
    tangent_mid = df((l + u) / 2)
    fl = f(l)

    def above_l(d: Tensor) -> Tensor:  # tangent at d passes above f(l)
        return f(d) + df(d) * (l - d) >= fl

    lo_d, hi_d = torch.zeros_like(u), u.clamp(min=0)
    for _ in range(_BISECT_STEPS):
        mid = (lo_d + hi_d) / 2
        ok = above_l(mid)
        hi_d, lo_d = torch.where(ok, mid, hi_d), torch.where(ok, lo_d, mid)
    crossing = torch.where(above_l(u), df(hi_d), chord)
    return torch.where(u <= 0, chord, torch.where(l >= 0, tangent_mid, crossing))


def _critical(op: str, a: Tensor) -> Tensor:
    """t >= 0 with f'(t) = a (the concave-side touching point of slope a), +inf if none."""
    if op == "sigmoid":
        s = (1 + torch.sqrt((1 - 4 * a).clamp(min=0))) / 2
        t = torch.log(s) - torch.log1p(-s)
    else:  # tanh
        t = torch.atanh(torch.sqrt((1 - a).clamp(min=0)))
    return torch.where(a > 0, t, torch.full_like(a, math.inf))


def relaxation(op: str, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sound linear bounds a_L z + g_L <= op(z) <= a_U z + g_U for z in [lo, hi] (element-wise).

    Returns (a_L, g_L, a_U, g_U) in lo's dtype, slopes >= 0. Slopes follow CROWN; intercepts
    are the exact extremes of op(z) - a z over [lo, hi] (endpoints and the touching point where
    op'(z) = a), evaluated in float64, widened by 64 float64 ulps of the terms and rounded
    outward. Non-finite bounds get slope 0 (the constant interval)."""
    dtype = lo.dtype
    l, u = lo.double(), hi.double()
    f, _ = _fn(op)
    if op == "relu":
        a_u = torch.where(l >= 0, 1.0, torch.where(u <= 0, 0.0, u / (u - l)))
        a_l = torch.where(l >= 0, 1.0, torch.where(u <= 0, 0.0, (u >= -l).double()))
    else:
        a_u = _s_upper_slope(op, l, u)
        a_l = _s_upper_slope(op, -u, -l)  # f(-z) = c - f(z): the lower line mirrors the upper
    finite = torch.isfinite(l) & torch.isfinite(u)
    a_u = torch.where(finite, a_u, 0.0).clamp(min=0).to(dtype).double()
    a_l = torch.where(finite, a_l, 0.0).clamp(min=0).to(dtype).double()

    def g(z: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """op(z) - a z and the magnitude its float64 rounding error is relative to (for relu
        with a in {0, 1} it is exact, so stable neurons keep exact relaxations)."""
        fz = f(z)
        az = torch.where(a == 0, 0.0, a * z)
        v = fz - az
        if op == "relu":
            return v, torch.where((a == 0) | (a == 1), 0.0, v.abs() + az.abs())
        return v, fz.abs() + az.abs()

    eps = 2 * unit_roundoff(torch.float64)  # float64's, or the covered dtype's: its runs' sigma(z) too
    ulps = 64 * eps if op != "relu" else 2 * eps
    if op == "relu":
        up_pts = (l, u)
        lo_pts = (l, u, torch.zeros_like(l).clamp(l, u))
    else:
        up_pts = (l, u, _critical(op, a_u).clamp(l, u))
        lo_pts = (l, u, (-_critical(op, a_l)).clamp(l, u))
    up_vals = [g(z, a_u) for z in up_pts]
    lo_vals = [g(z, a_l) for z in lo_pts]
    g_u = torch.stack([v + ulps * m for v, m in up_vals]).amax(0)
    g_l = torch.stack([v - ulps * m for v, m in lo_vals]).amin(0)
    return (a_l.to(dtype), _round_to(g_l, dtype, upward=False),
            a_u.to(dtype), _round_to(g_u, dtype, upward=True))


# --------------------------------------------------------------------------- affine operators
@lru_cache(maxsize=64)
def _conv_index(in_shape: tuple[int, ...], w_shape: tuple[int, ...], stride, padding, dilation,
                groups: int) -> Tensor:
    """[n_out, n_in] map from the dense conv matrix to 1 + flat weight index (0 = no weight).

    Convolving unit inputs with a weight tensor holding 1..K gives each (output, input) pair
    the single kernel entry that connects them (exact in float64 for K < 2^53)."""
    n_in = math.prod(in_shape)
    k = math.prod(w_shape)
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
    ids = torch.arange(1, k + 1, dtype=torch.float64).reshape(w_shape)
    out = torch.nn.functional.conv2d(eye, ids, None, stride, padding, dilation, groups)
    return out.reshape(n_in, -1).t().round().long().contiguous()


def _dense(layer: Layer, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Layer as y = W x + b on flattened activations: W [P, n_out, n_in], b [P, n_out]."""
    if layer.op == "linear":
        return w, b
    a = layer.attrs
    idx = _conv_index(tuple(layer.in_shape), tuple(w.shape[1:]), tuple(a.get("stride", (1, 1))),
                      tuple(a.get("padding", (0, 0))), tuple(a.get("dilation", (1, 1))),
                      int(a.get("groups", 1)))
    flat = torch.cat([torch.zeros_like(w.flatten(1)[:, :1]), w.flatten(1)], dim=1)
    spatial = math.prod(layer.out_shape[1:])
    return flat[:, idx.to(w.device)], None if b is None else b.repeat_interleave(spatial, dim=-1)


def _layer_params(graph: LayerGraph, params_lo: list[Tensor], params_hi: list[Tensor]):
    """Per layer index of a linear/conv2d layer: ((W_lo, W_hi), (b_lo, b_hi) or None) as stored."""
    out = {}
    for i, (wi, bi) in param_index(graph).items():
        out[i] = ((params_lo[wi], params_hi[wi]), None if bi is None else (params_lo[bi], params_hi[bi]))
    return out


def _affine(graph: LayerGraph, raw: dict) -> dict:
    """Per layer index: (W_lo, W_hi, b_lo, b_hi) as dense flat operators (b_* None if no bias)."""
    out = {}
    for i, (w, b) in raw.items():
        layer = graph.layers[i]
        w_lo, b_lo = _dense(layer, w[0], None if b is None else b[0])
        w_hi, b_hi = _dense(layer, w[1], None if b is None else b[1])
        out[i] = (w_lo, w_hi, b_lo, b_hi)
    return out


# --------------------------------------------------------------------------- back-substitution
def _backsub(graph: LayerGraph, affine, k: int, flat_bounds: list[tuple[Tensor, Tensor]],
             x_lo: Tensor, x_hi: Tensor) -> tuple[Tensor, Tensor]:
    """CROWN bounds of the output of affine layer k, [P, N, n_k].

    ``flat_bounds[i]`` are sound bounds of layer i's output (flattened), used for the
    relaxations of activations below k. Rows: +f (upper) and -f (negated lower)."""
    w_lo, w_hi, b_lo, b_hi = affine[k]
    n_k = w_lo.shape[-2]
    a_lo = torch.cat([w_lo, -w_hi], dim=-2).unsqueeze(1)       # [P, 1, R, n]
    a_hi = torch.cat([w_hi, -w_lo], dim=-2).unsqueeze(1)
    if b_lo is None:
        const = torch.zeros_like(a_lo[..., 0])                 # [P, 1, R]
    else:
        const = torch.cat([b_hi, -b_lo], dim=-1).unsqueeze(1)
    for i in range(k - 1, -1, -1):
        layer = graph.layers[i]
        if layer.op in RESHAPES:
            continue
        if layer.is_parametric:
            w_lo, w_hi, b_lo, b_hi = affine[i]
            if b_lo is not None:
                _, bias_hi = matmul_bounds(b_lo[:, None, None, :], b_hi[:, None, None, :], a_lo, a_hi)
                const = up(const + bias_hi.squeeze(-2))
            a_lo, a_hi = matmul_bounds(a_lo, a_hi, w_lo.mT.unsqueeze(1), w_hi.mT.unsqueeze(1))
            continue
        pre_lo, pre_hi = flat_bounds[i - 1] if i > 0 else (x_lo, x_hi)
        a_lo, a_hi, const = _through_activation(layer.op, a_lo, a_hi, const, pre_lo, pre_hi)
    _, x_term = matmul_bounds(x_lo.unsqueeze(-2), x_hi.unsqueeze(-2), a_lo, a_hi)
    upper = up(const + x_term.squeeze(-2))
    return sanitize(-upper[..., n_k:], upper[..., :n_k])


def _through_activation(op: str, a_lo: Tensor, a_hi: Tensor, const: Tensor,
                        pre_lo: Tensor, pre_hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Replace coefficients on op(z) by coefficients on z (App. D / I.5).

    Sign-definite coefficient: the matching relaxation line (upper line for a positive one in
    the upper-bound rows). Coefficient spanning zero: the neuron's concrete interval goes into
    the constant and its coefficient becomes 0, as in App. D; even for an exact relaxation
    (stable ReLU) this measured tighter than passing the interval through, whose width then
    compounds with every earlier layer (depth 6: 30.5 vs 46.1 mean width in bench/crown.py)."""
    sl_l, ic_l, sl_u, ic_u = (t.unsqueeze(-2) for t in relaxation(op, pre_lo, pre_hi))
    post_lo, post_hi = (t.unsqueeze(-2) for t in activation_bounds(op, pre_lo, pre_hi))
    upper = a_hi > 0
    concrete = upper & (a_lo < 0)
    slope = torch.where(concrete, 0.0, torch.where(upper, sl_u, sl_l))
    icept = torch.where(upper, ic_u, ic_l)
    c_hi = _mul_upper(a_lo, a_hi, torch.where(concrete, post_lo, icept), torch.where(concrete, post_hi, icept))
    return down(a_lo * slope), up(a_hi * slope), up(const + _sum_up(c_hi))


# --------------------------------------------------------------------------- layers
def _intersect(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def _chunk_size(graph: LayerGraph, p: int) -> int:
    widths = [math.prod(graph.input_shape)] + [math.prod(layer.out_shape) for layer in graph.layers]
    per_sample = max(2 * widths[i + 1] * max(widths[: i + 1]) for i in range(len(graph.layers)))
    return max(1, CHUNK_ELEMENTS // max(1, p * per_sample))


def crown_layers(graph: LayerGraph, params_lo: list[Tensor], params_hi: list[Tensor],
                 x_lo: Tensor, x_hi: Tensor, *, tighten_output: bool = True) -> list[tuple[Tensor, Tensor]]:
    """Bounds of every layer's output (index i = output of graph.layers[i]), [P, N, *out_shape].

    Each linear/conv2d layer is bounded by full CROWN back to the input. Intermediate bounds
    (those the relaxations below later layers use) are the element-wise tightest of CROWN and
    one IBP step from the previous layer's bounds; the last parametric layer is intersected
    with its IBP step only if ``tighten_output`` (False gives pure CROWN output bounds).
    x_* are [N, *in_shape] or [P, N, *in_shape]; samples are processed in chunks whose
    coefficient tensors stay below CHUNK_ELEMENTS elements."""
    point = x_lo is x_hi  # lets the IBP steps skip radius products
    if x_lo.dim() == len(graph.input_shape) + 1:
        x_lo, x_hi = x_lo.unsqueeze(0), x_hi.unsqueeze(0)
    raw = _layer_params(graph, params_lo, params_hi)
    affine = _affine(graph, raw)
    size = _chunk_size(graph, max(x_lo.shape[0], params_lo[0].shape[0] if params_lo else 1))
    chunks = []
    for s in range(0, x_lo.shape[1], size):
        lo = x_lo[:, s:s + size]
        chunks.append(_crown_chunk(graph, raw, affine, lo, lo if point else x_hi[:, s:s + size], tighten_output))
    if len(chunks) == 1:
        return chunks[0]
    return [(torch.cat([c[i][0] for c in chunks], 1), torch.cat([c[i][1] for c in chunks], 1))
            for i in range(len(graph.layers))]


def _crown_chunk(graph: LayerGraph, raw: dict, affine: dict, x_lo: Tensor, x_hi: Tensor,
                 tighten_output: bool) -> list[tuple[Tensor, Tensor]]:
    last = max(raw, default=-1)
    n = x_lo.shape[1]
    fx_lo, fx_hi = x_lo.flatten(2), x_hi.flatten(2)
    flat: list[tuple[Tensor, Tensor]] = []
    shaped: list[tuple[Tensor, Tensor]] = []
    prev = (x_lo, x_hi)
    for i, layer in enumerate(graph.layers):
        if layer.is_parametric:
            lo, hi = _backsub(graph, affine, i, flat, fx_lo, fx_hi)
            p = lo.shape[0]
            bounds = (lo.reshape(p, n, *layer.out_shape), hi.reshape(p, n, *layer.out_shape))
            if i != last or tighten_output:
                bounds = _intersect(bounds, layer_bounds(layer, *raw[i], *prev))
        elif layer.op in ACTIVATIONS:
            bounds = activation_bounds(layer.op, *prev)
        elif layer.op in RESHAPES:
            bounds = tuple(t.reshape(*t.shape[:2], *layer.out_shape) for t in prev)
        else:
            raise ValueError(f"CROWN does not support layer op {layer.op!r}")
        shaped.append(bounds)
        flat.append(tuple(t.flatten(2) for t in bounds))
        prev = bounds
    return shaped
