"""CROWN with interval parameters and the forward-bounds front door.

Soundness is checked against float64 evaluations of networks whose parameters and inputs are
drawn inside the boxes (vertices included), against exact grid x vertex enumeration on tiny
nets, and against the nominal point (zero-width boxes must still contain the float64 value).
Tightness: with point parameters CROWN must match a float64 reference CROWN written here.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pcert.compiler.graph import Layer, LayerGraph
from pcert.runtime.bounds.crown import relaxation
from pcert.runtime.bounds.forward import METHODS, bound_layers, bound_outputs

TOL = 1e-9  # float64 evaluation error allowance, far below float32 resolution


# --------------------------------------------------------------------------- nets
def _graph(input_shape: tuple[int, ...], specs: list[tuple]) -> LayerGraph:
    """specs: ("linear", out) | ("conv2d", out_c, k, stride, pad) | (act,) | ("flatten",)."""
    layers, shape = [], input_shape
    for i, spec in enumerate(specs):
        op = spec[0]
        if op == "linear":
            out, attrs = (spec[1],), {}
        elif op == "conv2d":
            c, k, s, p = spec[1:]
            h = (shape[1] + 2 * p - k) // s + 1
            w = (shape[2] + 2 * p - k) // s + 1
            out, attrs = (c, h, w), {"stride": (s, s), "padding": (p, p), "dilation": (1, 1), "groups": 1,
                                     "kernel": (k, k)}  # kernel: test-only, to size the weights
        elif op == "flatten":
            out, attrs = (math.prod(shape),), {}
        else:
            out, attrs = shape, {}
        layers.append(Layer(op=op, name=f"l{i}", in_shape=shape, out_shape=out, attrs=attrs))
        shape = out
    return LayerGraph(input_shape=input_shape, layers=tuple(layers))


def _init(graph: LayerGraph, gen: torch.Generator) -> tuple[LayerGraph, list[torch.Tensor]]:
    """Random weights (stored on the layers too, as the importer does) and the flat params."""
    params, layers = [], []
    for layer in graph.layers:
        if layer.is_parametric:
            if layer.op == "linear":
                shape = (layer.out_shape[0], math.prod(layer.in_shape))
            else:
                shape = (layer.out_shape[0], layer.in_shape[0], *layer.attrs["kernel"])
            w = torch.randn(shape, generator=gen) * (1.5 / math.sqrt(math.prod(shape[1:])))
            b = torch.randn(shape[0], generator=gen) * 0.3
            params += [w, b]
            layer = replace(layer, weight=w.numpy(), bias=b.numpy())
        layers.append(layer)
    return replace(graph, layers=tuple(layers)), params


def forward64(graph: LayerGraph, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Exact-ish (float64) network output. params [S, *shape], x [S, N, *in] -> [S, N, *out]."""
    h, j = x.double(), 0
    s, n = x.shape[:2]
    for layer in graph.layers:
        if layer.op == "linear":
            w, b = params[j].double(), params[j + 1].double()
            h = h @ w.mT + b[:, None, :]
            j += 2
        elif layer.op == "conv2d":
            w, b = params[j].double(), params[j + 1].double()
            a = layer.attrs
            h = torch.stack([F.conv2d(h[i], w[i], b[i], a["stride"], a["padding"]) for i in range(s)])
            j += 2
        elif layer.op in ("relu", "sigmoid", "tanh"):
            h = getattr(torch, layer.op)(h)
        else:
            h = h.reshape(s, n, *layer.out_shape)
    return h


def _boxes(params, radii, gen):
    """Asymmetric parameter boxes around ``params``, one per radius (budget axis P)."""
    lo, hi = [], []
    for p in params:
        r = torch.tensor(radii, dtype=p.dtype).reshape(-1, *[1] * p.dim())
        lo.append(p - r * torch.rand(len(radii), *p.shape, generator=gen))
        hi.append(p + r * torch.rand(len(radii), *p.shape, generator=gen))
    return lo, hi


def _draw(lo: torch.Tensor, hi: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """s points in [lo, hi] (float64): half uniform, half box vertices."""
    u = torch.rand(s, *lo.shape, generator=gen, dtype=torch.float64)
    u[: s // 2] = u[: s // 2].round()
    return lo.double() + u * (hi.double() - lo.double())


def _assert_inside(y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    slack = TOL * (1 + y.abs())
    assert not torch.isnan(lo).any() and not torch.isnan(hi).any()
    bad_lo = y < lo.double() - slack
    bad_hi = y > hi.double() + slack
    assert not bad_lo.any(), f"below lower bound by {(lo.double() - y)[bad_lo].max().item():.3g}"
    assert not bad_hi.any(), f"above upper bound by {(y - hi.double())[bad_hi].max().item():.3g}"


ARCHS = {
    "mlp1": ((3,), [("linear", 5), ("act",), ("linear", 2)]),
    "mlp3": ((2,), [("linear", 6), ("act",), ("linear", 5), ("act",), ("linear", 4), ("act",), ("linear", 3)]),
    "conv": ((1, 5, 5), [("conv2d", 2, 3, 1, 1), ("act",), ("conv2d", 3, 2, 2, 0), ("act",), ("flatten",),
                         ("linear", 3)]),
    "convfirst_flat": ((2, 4, 4), [("conv2d", 3, 3, 1, 0), ("act",), ("flatten",), ("linear", 4), ("act",),
                                   ("linear", 2)]),
    "act_out": ((3,), [("act",), ("linear", 4), ("act",), ("linear", 2), ("act",)]),
}


def _make(arch: str, act: str) -> LayerGraph:
    shape, specs = ARCHS[arch]
    specs = [(act,) if s == ("act",) else s for s in specs]
    return _graph(shape, specs)


# --------------------------------------------------------------------------- soundness
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), arch=st.sampled_from(sorted(ARCHS)),
       act=st.sampled_from(["relu", "sigmoid", "tanh"]), p_rad=st.sampled_from([0.0, 1e-3, 0.05]),
       x_rad=st.sampled_from([0.0, 0.01, 0.4]))
def test_sampled_networks_stay_inside_bounds(seed, arch, act, p_rad, x_rad):
    gen = torch.Generator().manual_seed(seed)
    graph, params = _init(_make(arch, act), gen)
    radii = [p_rad, p_rad / 4]
    p_lo, p_hi = _boxes(params, radii, gen)
    n = 4
    centre = torch.randn(n, *graph.input_shape, generator=gen)
    x_lo = centre - x_rad * torch.rand(centre.shape, generator=gen)
    x_hi = centre + x_rad * torch.rand(centre.shape, generator=gen)
    bounds = {m: bound_outputs(graph, p_lo, p_hi, x_lo, x_hi, method=m) for m in METHODS}
    for lo, hi in bounds.values():
        assert lo.shape == hi.shape == (len(radii), n, *graph.output_shape)
        assert lo.dtype == torch.float32
    s = 24
    for p in range(len(radii)):
        theta = [_draw(lo[p], hi[p], s, gen) for lo, hi in zip(p_lo, p_hi)]
        y = forward64(graph, theta, _draw(x_lo, x_hi, s, gen))
        for lo, hi in bounds.values():
            _assert_inside(y, lo[p], hi[p])
    # crown+ibp is the element-wise tightest of both
    (cl, ch), (il, ih), (bl, bh) = bounds["crown"], bounds["ibp"], bounds["crown+ibp"]
    assert (bl >= torch.maximum(cl, il)).all() and (bh <= torch.minimum(ch, ih)).all()


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_zero_width_boxes_contain_the_float64_value(arch, act):
    """Outward rounding: a point box must still contain the exact (float64) output."""
    gen = torch.Generator().manual_seed(7)
    graph, params = _init(_make(arch, act), gen)
    x = torch.randn(16, *graph.input_shape, generator=gen)
    y = forward64(graph, [p[None] for p in params], x[None])
    for method in METHODS:
        lo, hi = bound_outputs(graph, [p[None] for p in params], [p[None] for p in params], x, x, method)
        assert (lo.double() <= y).all() and (y <= hi.double()).all(), method
        assert (hi - lo).max() < 1e-3, method  # and is still tight


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_gradient_attacks_stay_inside_bounds(act):
    """Projected sign-gradient ascent/descent on (parameters, input) jointly, float64, from
    many starts: the attack's best values must stay inside, and get close to, the bounds."""
    gen = torch.Generator().manual_seed(21)
    graph, params = _init(_make("mlp3", act), gen)
    p_lo, p_hi = _boxes(params, [0.05], gen)
    x = torch.randn(3, 2, generator=gen)
    x_lo, x_hi = x - 0.3, x + 0.3
    s = 64
    best_hi, best_lo = None, None
    for sign in (1.0, -1.0):
        theta = [_draw(lo[0], hi[0], s, gen).requires_grad_() for lo, hi in zip(p_lo, p_hi)]
        xs = _draw(x_lo, x_hi, s, gen).requires_grad_()
        boxes = [(lo[0].double(), hi[0].double()) for lo, hi in zip(p_lo, p_hi)] + [(x_lo.double(), x_hi.double())]
        for step in range(60):
            y = forward64(graph, theta, xs)  # [S, N, out]: every (sample, output) attacked separately
            grads = torch.autograd.grad((sign * y).sum(), theta + [xs])
            with torch.no_grad():
                for t, g, (lo, hi) in zip(theta + [xs], grads, boxes):
                    t.add_(g.sign() * (hi - lo) * 0.1 * (0.95**step)).clamp_(lo, hi)
        with torch.no_grad():
            y = forward64(graph, theta, xs)
        if sign > 0:
            best_hi = y.amax(0)
        else:
            best_lo = y.amin(0)
    for method in METHODS:
        lo, hi = bound_outputs(graph, p_lo, p_hi, x_lo, x_hi, method)
        _assert_inside(best_hi[None], lo[0], hi[0])
        _assert_inside(best_lo[None], lo[0], hi[0])
    lo, hi = bound_outputs(graph, p_lo, p_hi, x_lo, x_hi, "crown+ibp")
    # the attack reaches a real part of the certified range (not a vacuous comparison)
    ratio = ((best_hi - best_lo) / (hi[0] - lo[0]).double()).mean()
    assert ratio > 0.2


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("in_dim", [1, 2])
def test_true_range_inside_bounds_by_enumeration(act, in_dim):
    """Tiny nets: every (input grid point, parameter-box vertex) pair lies inside the bounds."""
    gen = torch.Generator().manual_seed(11 + in_dim)
    graph, params = _init(_graph((in_dim,), [("linear", 2), (act,), ("linear", 1)]), gen)
    p_lo, p_hi = _boxes(params, [0.1], gen)
    x_lo = torch.tensor([[-0.3] * in_dim]) + 0.5
    x_hi = x_lo + 0.6
    flat_lo = torch.cat([t[0].flatten() for t in p_lo]).double()
    flat_hi = torch.cat([t[0].flatten() for t in p_hi]).double()
    k = flat_lo.numel()
    bits = torch.tensor([[(v >> i) & 1 for i in range(k)] for v in range(2**k)], dtype=torch.float64)
    verts = flat_lo + bits * (flat_hi - flat_lo)
    theta, off = [], 0
    for t in params:
        theta.append(verts[:, off:off + t.numel()].reshape(-1, *t.shape))
        off += t.numel()
    axes = [torch.linspace(float(x_lo[0, d]), float(x_hi[0, d]), 41 if in_dim == 1 else 13, dtype=torch.float64)
            for d in range(in_dim)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, in_dim)
    y = forward64(graph, theta, grid.expand(len(verts), *grid.shape))
    for method in METHODS:
        lo, hi = bound_outputs(graph, p_lo, p_hi, x_lo, x_hi, method)
        assert lo.item() <= y.min().item() and y.max().item() <= hi.item(), method


def test_conv_dense_operator_matches_torch():
    """CROWN's dense conv matrix is exact: point bounds enclose torch's float64 conv output
    tightly (a wrong weight index would be off by O(1))."""
    gen = torch.Generator().manual_seed(3)
    graph, params = _init(_graph((2, 6, 5), [("conv2d", 3, 3, 2, 1)]), gen)
    x = torch.randn(5, 2, 6, 5, generator=gen)
    lo, hi = bound_outputs(graph, [p[None] for p in params], [p[None] for p in params], x, x, "crown")
    ref = F.conv2d(x.double(), params[0].double(), params[1].double(), (2, 2), (1, 1))
    assert (lo[0].double() <= ref).all() and (ref <= hi[0].double()).all()
    assert (hi - lo).max() < 1e-4


# --------------------------------------------------------------------------- relaxations
@settings(max_examples=60, deadline=None)
@given(op=st.sampled_from(["relu", "sigmoid", "tanh"]), l=st.floats(-12, 12), w=st.floats(0, 15))
def test_relaxation_lines_enclose_activation(op, l, w):
    lo = torch.tensor([l], dtype=torch.float32)
    hi = torch.tensor([l + w], dtype=torch.float32)
    a_l, g_l, a_u, g_u = (t.double() for t in relaxation(op, lo, hi))
    z = torch.linspace(float(lo), float(hi), 2001, dtype=torch.float64)
    f = getattr(torch, op)(z)
    assert (a_l >= 0).all() and (a_u >= 0).all()
    assert (a_l * z + g_l <= f).all() and (f <= a_u * z + g_u).all()
    # both lines touch the curve (intercepts are the exact extremes, up to the float margin)
    assert (a_u * z + g_u - f).min() < 1e-5 and (f - a_l * z - g_l).min() < 1e-5
    if op != "relu" and float(lo) < 0 < float(hi):
        # CROWN's crossing case: the upper line passes through (l, f(l)), the lower through (u, f(u))
        assert abs(a_u * z[0] + g_u - f[0]) < 1e-4 and abs(a_l * z[-1] + g_l - f[-1]) < 1e-4


# --------------------------------------------------------------------------- tightness
def _reference_crown(ws, bs, x_lo, x_hi):
    """Standard CROWN (Zhang et al. 2018) for a point-parameter ReLU MLP in float64, with the
    same relaxations (chord upper; adaptive 0/1 lower) and intermediate bounds intersected with
    an IBP step. Returns pure-CROWN output bounds [N, out]."""
    pre = []
    for k in range(len(ws)):
        lam = {s: ws[k].expand(x_lo.shape[0], *ws[k].shape).clone() for s in (1, -1)}
        const = {s: bs[k].expand(x_lo.shape[0], -1).clone() for s in (1, -1)}
        for j in range(k - 1, -1, -1):
            l, u = pre[j]
            unstable = (l < 0) & (u > 0)
            a_u = torch.where(l >= 0, 1.0, torch.where(unstable, u / (u - l), 0.0))
            c_u = torch.where(unstable, -a_u * l, 0.0)
            a_l = torch.where(l >= 0, 1.0, torch.where(unstable, (u >= -l).double(), 0.0))
            for s in (1, -1):  # s=1: upper bound (lam >= 0 takes the upper line); s=-1: lower
                up = (lam[s] >= 0) if s == 1 else (lam[s] < 0)
                const[s] = const[s] + (lam[s] * torch.where(up, c_u[:, None, :], 0.0)).sum(-1)
                lam[s] = lam[s] * torch.where(up, a_u[:, None, :], a_l[:, None, :])
                const[s] = const[s] + lam[s] @ bs[j]
                lam[s] = lam[s] @ ws[j]
        x_c, x_r = (x_hi + x_lo) / 2, (x_hi - x_lo) / 2
        hi = const[1] + (lam[1] @ x_c[:, :, None]).squeeze(-1) + (lam[1].abs() @ x_r[:, :, None]).squeeze(-1)
        lo = const[-1] + (lam[-1] @ x_c[:, :, None]).squeeze(-1) - (lam[-1].abs() @ x_r[:, :, None]).squeeze(-1)
        if k < len(ws) - 1:
            p_lo, p_hi = (x_lo, x_hi) if k == 0 else (pre[k - 1][0].clamp(min=0), pre[k - 1][1].clamp(min=0))
            c, r = (p_hi + p_lo) / 2, (p_hi - p_lo) / 2
            lo = torch.maximum(lo, c @ ws[k].T + bs[k] - r @ ws[k].abs().T)
            hi = torch.minimum(hi, c @ ws[k].T + bs[k] + r @ ws[k].abs().T)
        pre.append((lo, hi))
    return pre[-1]


@pytest.mark.parametrize("depth", [2, 4, 6])
def test_point_parameters_match_reference_crown(depth):
    gen = torch.Generator().manual_seed(depth)
    specs = []
    for _ in range(depth - 1):
        specs += [("linear", 8), ("relu",)]
    graph, params = _init(_graph((3,), specs + [("linear", 3)]), gen)
    x = torch.randn(32, 3, generator=gen)
    x_lo, x_hi = x - 0.1, x + 0.1
    ref_lo, ref_hi = _reference_crown([p.double() for p in params[::2]], [p.double() for p in params[1::2]],
                                      x_lo.double(), x_hi.double())
    lo, hi = bound_outputs(graph, [p[None] for p in params], [p[None] for p in params], x_lo, x_hi, "crown")
    scale = 1e-4 * (1 + ref_hi.abs().max())
    assert (lo[0].double() <= ref_lo + scale).all() and (hi[0].double() >= ref_hi - scale).all()
    assert torch.allclose(lo[0].double(), ref_lo, atol=scale) and torch.allclose(hi[0].double(), ref_hi, atol=scale)
    assert ((ref_hi - ref_lo) > 0.01).any()  # a non-trivial comparison


def test_crown_beats_ibp_on_deep_narrow_nets():
    """Where back-substitution keeps the inter-layer dependencies (deep, narrow, small input
    box, small parameter intervals) CROWN's output intervals are narrower than IBP's."""
    gen = torch.Generator().manual_seed(5)
    specs = []
    for _ in range(5):
        specs += [("linear", 6), ("relu",)]
    graph, params = _init(_graph((4,), specs + [("linear", 2)]), gen)
    p_lo, p_hi = _boxes(params, [1e-3], gen)
    x = torch.randn(64, 4, generator=gen)
    widths = {m: (lambda b: (b[1] - b[0]).mean().item())(bound_outputs(graph, p_lo, p_hi, x - 0.05, x + 0.05, m))
              for m in METHODS}
    assert widths["crown"] < widths["ibp"]
    assert widths["crown+ibp"] <= widths["crown"]


# --------------------------------------------------------------------------- front door
def test_bound_layers_shapes_and_budget_axis():
    gen = torch.Generator().manual_seed(1)
    graph, params = _init(_make("conv", "relu"), gen)
    p_lo, p_hi = _boxes(params, [0.0, 0.01, 0.02], gen)
    x = torch.randn(3, *graph.input_shape, generator=gen)
    for method in METHODS:
        layers = bound_layers(graph, p_lo, p_hi, x - 0.01, x + 0.01, method)
        assert len(layers) == len(graph.layers)
        for layer, (lo, hi) in zip(graph.layers, layers):
            assert lo.shape == hi.shape == (3, 3, *layer.out_shape)
        # x with an explicit budget axis gives the same bounds
        lo_p, hi_p = bound_outputs(graph, p_lo, p_hi, (x - 0.01).expand(3, *x.shape), (x + 0.01).expand(3, *x.shape),
                                   method)
        assert torch.equal(lo_p, layers[-1][0]) and torch.equal(hi_p, layers[-1][1])
        # each budget point alone gives the same bounds as in the batch
        one = bound_outputs(graph, [t[1:2] for t in p_lo], [t[1:2] for t in p_hi], x - 0.01, x + 0.01, method)
        assert torch.allclose(one[0][0], layers[-1][0][1], atol=1e-5)
        assert torch.allclose(one[1][0], layers[-1][1][1], atol=1e-5)


def test_chunked_samples_equal_unchunked(monkeypatch):
    import pcert.runtime.bounds.crown as crown

    gen = torch.Generator().manual_seed(2)
    graph, params = _init(_make("mlp3", "tanh"), gen)
    p_lo, p_hi = _boxes(params, [0.01], gen)
    x = torch.randn(10, 2, generator=gen)
    whole = bound_outputs(graph, p_lo, p_hi, x - 0.1, x + 0.1, "crown")
    monkeypatch.setattr(crown, "CHUNK_ELEMENTS", 1)
    parts = bound_outputs(graph, p_lo, p_hi, x - 0.1, x + 0.1, "crown")
    # equal up to BLAS blocking differences in the last bits
    assert torch.allclose(whole[0], parts[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(whole[1], parts[1], rtol=1e-5, atol=1e-6)


def test_layer_without_bias_and_float64():
    """A bias-free layer takes one parameter slot (W only); float64 boxes stay float64."""
    gen = torch.Generator().manual_seed(4)
    graph, params = _init(_make("mlp3", "tanh"), gen)
    layers = list(graph.layers)
    layers[2] = replace(layers[2], bias=None)
    graph = replace(graph, layers=tuple(layers))
    params = [t.double() for i, t in enumerate(params) if i != 3]
    p_lo, p_hi = _boxes(params, [0.02], gen)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    theta = [_draw(lo[0], hi[0], 32, gen) for lo, hi in zip(p_lo, p_hi)]
    with_zero_bias = theta[:3] + [torch.zeros(32, layers[2].out_shape[0], dtype=torch.float64)] + theta[3:]
    y = forward64(graph, with_zero_bias, _draw(x - 0.2, x + 0.2, 32, gen))
    for method in METHODS:
        lo, hi = bound_outputs(graph, p_lo, p_hi, x - 0.2, x + 0.2, method)
        assert lo.dtype == torch.float64
        _assert_inside(y, lo[0], hi[0])


def test_infinite_inputs_give_infinite_not_nan_bounds():
    gen = torch.Generator().manual_seed(6)
    graph, params = _init(_make("mlp3", "relu"), gen)
    p_lo, p_hi = _boxes(params, [0.01], gen)
    x_lo, x_hi = torch.zeros(2, 2), torch.ones(2, 2)
    x_lo[0, 0] = -math.inf
    for method in METHODS:
        lo, hi = bound_outputs(graph, p_lo, p_hi, x_lo, x_hi, method)
        assert not torch.isnan(lo).any() and not torch.isnan(hi).any()
        assert torch.isfinite(lo[:, 1]).all() and torch.isfinite(hi[:, 1]).all()  # the finite sample


def test_unknown_method_is_rejected():
    graph, params = _init(_make("mlp1", "relu"), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unknown bound method"):
        bound_outputs(graph, [p[None] for p in params], [p[None] for p in params], torch.zeros(1, 3),
                      torch.zeros(1, 3), method="deeppoly")


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_float64_bounds_covering_float32_contain_the_float32_forward(arch, act):
    """cover="all": float64 bounds must also contain float32 runs, whose sigma(z) errs by float32 ulps
    (relaxation margins and sums in the covered dtype's unit, for every method)."""
    from pcert.compiler.torch_model import to_torch
    from pcert.runtime.bounds.interval import covering
    gen = torch.Generator().manual_seed(3)
    graph, params = _init(_make(arch, act), gen)
    x = torch.randn(64, *graph.input_shape, generator=gen) * 3
    net = to_torch(graph)
    with torch.no_grad():
        for t, v in zip(net.parameters(), params):
            t.copy_(v)
        y32 = net(x).double()
    p64 = [p.double()[None] for p in params]
    for method in METHODS:
        with covering(torch.float32):
            lo, hi = bound_outputs(graph, p64, p64, x.double(), x.double(), method)
        assert (lo[0] <= y32).all() and (y32 <= hi[0]).all(), method
