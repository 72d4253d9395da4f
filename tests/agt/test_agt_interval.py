"""Interval primitives and IBP: sampled points inside the boxes stay inside the bounds (float32)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcert.compiler.model_builder import build_conv
from pcert.compiler.torch_model import to_torch
from pcert.runtime.bounds.ibp import ibp_layers
from pcert.runtime.bounds import interval
from pcert.runtime.bounds.interval import (abs_matmul_up, activation_bounds, activation_grad_bounds, conv2d_bounds,
                                           gamma, linear_bounds, matmul_bounds, mul_bounds, outward,
                                           shared_matmul, shifted_linear_bounds)

SETTINGS = settings(max_examples=25, deadline=None)


def _box(gen: torch.Generator, shape, scale: float, width: float):
    c = torch.randn(shape, generator=gen) * scale
    r = torch.rand(shape, generator=gen) * width
    return c - r, c + r


def _sample(gen: torch.Generator, lo, hi):
    """Uniform points plus corners (where bounds are tightest)."""
    t = torch.rand(lo.shape, generator=gen)
    t = torch.where(torch.rand(lo.shape, generator=gen) < 0.3, t.round(), t)
    return torch.minimum(torch.maximum(lo + (hi - lo) * t, lo), hi)


def _inside(v, lo, hi):
    return bool(((v >= lo) & (v <= hi)).all())


def _wild(gen: torch.Generator, shape, exponents: tuple[int, int]) -> torch.Tensor:
    """float64 values over a range of magnitudes (float32 underflow and overflow included), some 0."""
    lo, hi = exponents
    e = torch.randint(lo, hi + 1, shape, generator=gen).double()
    v = torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** e
    return torch.where(torch.rand(shape, generator=gen) < 0.1, torch.zeros_like(v), v)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), k=st.integers(1, 64), m=st.integers(1, 3),
       exponents=st.sampled_from([(0, 0), (-3, 3), (-46, -36), (-50, 39), (30, 39)]))
def test_abs_matmul_up_bounds_the_exact_product(seed, n, k, m, exponents):
    """The float32 path of the radius products: at least the exact |u| @ |v| (rational arithmetic),
    and within ~gamma_k of it where float32 neither underflows nor overflows."""
    gen = torch.Generator().manual_seed(seed)
    u, v = _wild(gen, (n, k), exponents), _wild(gen, (k, m), exponents)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interval, "_FAST_RADIUS_MACS", 0)  # every product takes the float32 path
        got = abs_matmul_up(u, v)
    assert got.dtype == torch.float64
    f32_max = float(torch.finfo(torch.float32).max)
    for i in range(n):
        for j in range(m):
            exact = sum(Fraction(abs(float(u[i, c]))) * Fraction(abs(float(v[c, j]))) for c in range(k))
            g = float(got[i, j])
            if math.isnan(g):  # inf * 0 in float32: callers round it to the infinite side
                assert bool((u[i].abs() > f32_max).any() or (v[:, j].abs() > f32_max).any())
                continue
            assert g == math.inf or Fraction(g) >= exact
            if exponents in ((0, 0), (-3, 3)):
                assert g <= float(exact) * (1 + 3 * gamma(k + 2, torch.float32)) + 1e-30


def test_abs_matmul_up_covers_terms_lost_by_float32_summation(monkeypatch):
    """One 1 and thousands of terms below half its ulp: a float32 sum drops many of them (the
    a-priori gamma_k term must cover that; random data rarely shows it)."""
    monkeypatch.setattr(interval, "_FAST_RADIUS_MACS", 0)
    k = 4096
    u = torch.full((1, k), 0.99 * 2.0 ** -24, dtype=torch.float64)
    u[0, 0] = 1.0
    v = torch.ones(k, 1, dtype=torch.float64)
    exact = 1 + (k - 1) * Fraction(0.99 * 2.0 ** -24)
    got = float(abs_matmul_up(u, v))
    assert exact <= Fraction(got) <= exact * (1 + Fraction(3 * gamma(k, torch.float32)))


@pytest.mark.parametrize("a_shape,b_shape", [((1, 5, 4), (3, 4, 6)), ((3, 5, 4), (1, 4, 6)), ((5, 4), (3, 4, 6)),
                                             ((3, 5, 4), (3, 4, 6)), ((1, 5, 4), (1, 4, 6))])
def test_shared_matmul_equals_broadcast_matmul(a_shape, b_shape):
    """Folding a shared side's budget axis into one GEMM changes nothing but the summation order."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(a_shape, generator=gen, dtype=torch.float64)
    b = torch.randn(b_shape[:-2] + b_shape[:-3:-1], generator=gen, dtype=torch.float64).transpose(-1, -2)  # a view
    got = shared_matmul(a, b)
    want = torch.matmul(a, b)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), k=st.integers(1, 40), o=st.integers(1, 7),
       p=st.integers(1, 3), width=st.sampled_from([0.0, 1e-6, 0.1, 2.0]))
def test_linear_bounds_contain_samples(seed, n, k, o, p, width):
    gen = torch.Generator().manual_seed(seed)
    x = _box(gen, (p, n, k), 3.0, width)
    w = _box(gen, (p, o, k), 1.0, width)
    b = _box(gen, (p, o), 1.0, width)
    lo, hi = linear_bounds(*x, *w, *b)
    for _ in range(8):
        xs, ws, bs = (_sample(gen, *t) for t in (x, w, b))
        y32 = torch.matmul(xs, ws.transpose(-1, -2)) + bs[:, None]
        y64 = torch.matmul(xs.double(), ws.double().transpose(-1, -2)) + bs.double()[:, None]
        assert _inside(y32, lo, hi) and _inside(y64, lo.double(), hi.double())
    mlo, mhi = matmul_bounds(x[0][0], x[0][0], *w)  # shared exact input, broadcast over P
    y = torch.matmul(x[0][0].double(), w[0].double().transpose(-1, -2))
    assert mlo.shape == (p, n, o) and _inside(y, mlo.double(), mhi.double())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), k=st.integers(1, 40), o=st.integers(1, 7),
       p=st.integers(1, 3), width=st.sampled_from([0.0, 1e-6, 0.1]), eps=st.sampled_from([1e-3, 0.01, 0.3]))
def test_shifted_linear_bounds_contain_the_box_and_stay_near_exact(seed, n, k, o, p, width, eps):
    """The feature-poisoned first layer: clean bounds shifted by eps * sum|W| contain every input in
    x +- eps with every parameter in the box, and lie within 2 eps sum(W_hi - W_lo) of the
    intersected Rump/sign-split bounds of the box itself."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64) * 3.0
    w = tuple(t.double() for t in _box(gen, (p, o, k), 1.0, width))
    b = tuple(t.double() for t in _box(gen, (p, o), 1.0, width))
    radius = torch.full((p,), eps, dtype=torch.float64)
    lo, hi = shifted_linear_bounds(*linear_bounds(x, x, *w, *b), *w, radius)
    for _ in range(8):
        xs = _sample(gen, x - eps, x + eps)
        ws, bs = (_sample(gen, *t) for t in (w, b))
        assert _inside(torch.matmul(xs, ws.transpose(-1, -2)) + bs[:, None], lo, hi)
    ex_lo, ex_hi = linear_bounds(x - eps, x + eps, *w, *b)
    slack = 2 * eps * (w[1] - w[0]).sum(-1).unsqueeze(1) + 1e-9 * (1 + ex_hi.abs() + ex_lo.abs())
    assert bool((lo >= ex_lo - slack).all() and (hi <= ex_hi + slack).all())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), stride=st.integers(1, 2), padding=st.integers(0, 1),
       dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]), width=st.sampled_from([0.0, 0.05, 1.0]))
def test_conv2d_bounds_contain_samples(seed, stride, padding, dilation, groups, width):
    gen = torch.Generator().manual_seed(seed)
    p, n, c, oc = 2, 2, 2, 4
    x = _box(gen, (p, n, c, 7, 7), 1.0, width)
    w = _box(gen, (p, oc, c // groups, 3, 3), 0.5, width)
    b = _box(gen, (p, oc), 0.5, width)
    args = ((stride, stride), (padding, padding), (dilation, dilation), groups)
    lo, hi = conv2d_bounds(*x, *w, *b, *args)
    for _ in range(6):
        xs, ws, bs = (_sample(gen, *t) for t in (x, w, b))
        for q in range(p):
            y = torch.nn.functional.conv2d(xs[q], ws[q], bs[q], *args)
            assert _inside(y, lo[q], hi[q])


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), op=st.sampled_from(["relu", "sigmoid", "tanh"]),
       scale=st.sampled_from([0.1, 3.0, 40.0]))
def test_elementwise_bounds_contain_samples(seed, op, scale):
    gen = torch.Generator().manual_seed(seed)
    a, b = _box(gen, (50,), scale, scale), _box(gen, (50,), scale, scale)
    mlo, mhi = mul_bounds(*a, *b)
    alo, ahi = activation_bounds(op, *a)
    dlo, dhi = activation_grad_bounds(op, *a)
    fn = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[op]
    for _ in range(10):
        xa, xb = _sample(gen, *a), _sample(gen, *b)
        assert _inside(xa * xb, mlo, mhi)
        assert _inside(fn(xa), alo, ahi) and _inside(fn(xa.double()), alo.double(), ahi.double())
        xg = xa.clone().requires_grad_(True)
        (gout,) = torch.autograd.grad(fn(xg).sum(), xg)
        assert _inside(gout, dlo, dhi)


def test_nan_and_overflow_never_look_tight():
    lo, hi = outward(torch.tensor([math.nan, 1.0]), torch.tensor([math.nan, 2.0]))
    assert lo[0] == -math.inf and hi[0] == math.inf and lo[1] < 1.0 and hi[1] > 2.0
    big = torch.full((1, 1, 4), 3e38)
    lo, hi = matmul_bounds(big, big, big, big)
    assert not torch.isnan(lo).any() and hi.item() == math.inf
    inf = torch.tensor([[[-math.inf, 1.0]]])
    lo, hi = matmul_bounds(inf, -inf, torch.ones(1, 1, 2), torch.ones(1, 1, 2))
    assert lo.item() == -math.inf and hi.item() == math.inf



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_point_intervals_keep_odd_subnormals(dtype):
    """Halving 2^-149 (float32) or 2^-1074 (float64) rounds to 0: a point interval's midpoint must be its
    value, or a product with a large weight loses all of it."""
    s = torch.tensor([[torch.finfo(dtype).tiny * torch.finfo(dtype).eps]], dtype=dtype)  # the smallest subnormal
    w = torch.tensor([[2.0 ** 100]], dtype=dtype)
    exact = Fraction(float(s)) * Fraction(2) ** 100
    lo, hi = interval.linear_bounds(s, s.clone(), w, w, None, None)  # equal ends, distinct tensors
    assert Fraction(float(lo)) <= exact <= Fraction(float(hi))
    g = s.reshape(1, 1, 1, 1, 1)  # [P, N, oc, H, W]
    lo, hi = interval.conv2d_input_grad_bounds(g, g, w.reshape(1, 1, 1, 1, 1), w.reshape(1, 1, 1, 1, 1), (1, 1),
                                               (1, 1), (0, 0), (1, 1), 1)
    assert Fraction(float(lo.flatten()[0])) <= exact <= Fraction(float(hi.flatten()[0]))


def test_an_overflow_along_a_sum_leaves_the_bounds_infinite():
    """2^127 + 2^127 - 2^127 is 2^127, but its midpoint product overflows on the way: the bounds must not
    keep a finite end on the far side of it."""
    x = torch.tensor([[2.0 ** 127, 2.0 ** 127, -(2.0 ** 127)]])
    lo, hi = interval.linear_bounds(x, x, torch.ones(1, 3), torch.ones(1, 3), None, None)
    assert lo.item() <= 2.0 ** 127 <= hi.item()
    with interval.covering(torch.float32):  # float64 bounds of float32 runs: beyond float32's range is inf
        big = torch.tensor([[2.0 ** 64]], dtype=torch.float64)
        lo, hi = interval.mul_bounds(big, big, big, big)
        assert lo.item() <= 2.0 ** 128 and hi.item() == math.inf

ARCHS = ["3 -> 8 -> relu -> 8 -> tanh -> 2",
         "1x6x6 -> 4c3p1 -> sigmoid -> 4c3s2 -> relu -> flatten -> 5",
         "12 -> r3x2x2 -> 2c2g1 -> relu -> flatten -> 3"]


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), pw=st.sampled_from([0.0, 1e-3, 0.05]), xw=st.sampled_from([0.0, 0.1]))
def test_ibp_layers_contain_sampled_networks(arch, seed, pw, xw):
    graph = build_conv(arch, seed=seed % 1000)
    model = to_torch(graph)
    gen = torch.Generator().manual_seed(seed)
    base = [p.detach() for p in model.parameters()]
    p = 2
    plo = [(t - pw * torch.rand(t.shape, generator=gen)).expand(p, *t.shape).contiguous() for t in base]
    phi = [(t + pw * torch.rand(t.shape, generator=gen)).expand(p, *t.shape).contiguous() for t in base]
    x = torch.randn((3, *graph.input_shape), generator=gen)
    xlo, xhi = (x, x) if xw == 0 else (x - xw, x + xw)
    bounds = ibp_layers(graph, plo, phi, xlo, xlo if xw == 0 else xhi)
    assert [tuple(b[0].shape) for b in bounds] == [(p, 3, *layer.out_shape) for layer in graph.layers]
    for _ in range(6):
        with torch.no_grad():
            for t, lo_, hi_ in zip(model.parameters(), plo, phi):
                t.copy_(_sample(gen, lo_[1], hi_[1]))
            h = _sample(gen, xlo, xhi)
            for layer, module, (lo, hi) in zip(graph.layers, model, bounds):
                h = module(h)
                assert _inside(h, lo[1], hi[1]), layer.name


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-1e3, 1e3, width=32), eps_text=st.sampled_from(["0.01", "0.1", "0.3", "1e-7", "0.0123456789"]),
       near=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_input_box_contains_the_real_box(x, eps_text, near, dtype):
    """The data box [x - eps, x + eps] in real arithmetic, with eps the decimal the user wrote."""
    from fractions import Fraction

    from pcert.runtime.bounds.interval import input_box
    eps = float(eps_text)
    if near:  # x - eps close to 0: the subtraction cancels, eps's own rounding dominates
        x = float(torch.tensor(eps, dtype=torch.float32))
    xt = torch.tensor([x], dtype=torch.float32)
    lo, hi = input_box(xt, eps, dtype)
    assert lo.dtype == hi.dtype == dtype
    real_x, real_eps = Fraction(float(xt[0])), Fraction(eps_text)
    assert Fraction(float(lo[0])) <= real_x - real_eps and Fraction(float(hi[0])) >= real_x + real_eps
    zl, zh = input_box(xt, 0.0, dtype)
    assert torch.equal(zl, xt.to(dtype)) and torch.equal(zh, xt.to(dtype))


def test_shifted_bounds_round_a_tiny_radius_up_to_the_bounds_dtype():
    """A float64 radius below float32's range must not round down to 0 (or a smaller subnormal)."""
    w = torch.full((1, 1, 2), 1e30)
    y = torch.zeros(1, 1, 1)
    for radius in (5e-46, 1.9e-45):
        lo, hi = shifted_linear_bounds(y, y, w, w, torch.tensor([radius], dtype=torch.float64))
        exact = Fraction(radius) * 2 * Fraction(float(w[0, 0, 0]))
        assert Fraction(float(lo)) <= -exact and exact <= Fraction(float(hi))
