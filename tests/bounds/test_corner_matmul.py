"""Exact corner sums for interval x interval linear layers, against rational arithmetic: the numba
kernel, and the CUDA (Triton) kernel's code run by Triton's interpreter on the CPU (tests/agt/test_cuda.py
runs it compiled, on a device)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcert.runtime.bounds import corner_matmul, interval
from pcert.runtime.bounds.corner_matmul import corner_linear_bounds
from pcert.runtime.bounds.interval import covering, gamma, linear_bounds


@pytest.fixture(autouse=True, params=["numba", "triton", "triton-split"])
def kernel(request, monkeypatch):
    """Every test here runs on both kernels: the Triton one takes the host kernel's place, and with
    its reduction axis cut into slices of 4 (summed apart, then added) where it is longer."""
    if request.param.startswith("triton"):
        pytest.importorskip("triton")
        from pcert.runtime.bounds import corner_triton
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        if request.param == "triton-split":
            monkeypatch.setattr(corner_triton, "_MIN_SLICE", 4)
        corner_triton._kernel.cache_clear()  # decorated again, now for the interpreter
        monkeypatch.setattr(corner_matmul, "host_corner_sums", corner_triton.corner_sums)
        yield request.param
        corner_triton._kernel.cache_clear()
    else:
        yield request.param


def _box(gen: torch.Generator, shape, dtype, width: float, straddle: bool):
    """Boxes around values of mixed magnitude; some exactly 0-wide, some across 0."""
    c = torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-2, 3, shape, generator=gen)
    r = torch.rand(shape, generator=gen, dtype=torch.float64) * width * (torch.rand(shape, generator=gen) < 0.8)
    if straddle:
        r = torch.where(torch.rand(shape, generator=gen) < 0.3, c.abs() + r, r)
    return (c - r).to(dtype), (c + r).to(dtype)


def _exact_range(x, w, b) -> tuple[list, list]:
    """Per output, the exact range of sum_k x_k W_k + b over the boxes (rational corner sums)."""
    (xl, xh), (wl, wh), (bl, bh) = x, w, b
    p, n, k = xl.shape
    m = wl.shape[1]
    lo = [[[None] * m for _ in range(n)] for _ in range(p)]
    hi = [[[None] * m for _ in range(n)] for _ in range(p)]
    for q in range(p):
        for i in range(n):
            for j in range(m):
                s_lo, s_hi = Fraction(float(bl[q, j])), Fraction(float(bh[q, j]))
                for c in range(k):
                    corners = [Fraction(float(a)) * Fraction(float(v)) for a in (xl[q, i, c], xh[q, i, c])
                               for v in (wl[q, j, c], wh[q, j, c])]
                    s_lo, s_hi = s_lo + min(corners), s_hi + max(corners)
                lo[q][i][j], hi[q][i][j] = s_lo, s_hi
    return lo, hi


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), p=st.integers(1, 2), n=st.integers(1, 4), k=st.integers(1, 24),
       m=st.integers(1, 5), dtype=st.sampled_from([torch.float32, torch.float64]),
       width=st.sampled_from([0.0, 1e-6, 0.3, 3.0]), straddle=st.booleans())
def test_corner_bounds_are_the_exact_range_rounded_outward(seed, p, n, k, m, dtype, width, straddle):
    """lo <= the exact minimum and hi >= the exact maximum, each within the a-priori term of it:
    the kernel is sound and as tight as interval arithmetic can be."""
    gen = torch.Generator().manual_seed(seed)
    x = _box(gen, (p, n, k), dtype, width, straddle)
    w = _box(gen, (p, m, k), dtype, width, straddle)
    b = _box(gen, (p, m), dtype, width, straddle)
    assert corner_matmul.applies(x[0], w[0])
    lo, hi = linear_bounds(*x, *w, *b)
    assert lo.dtype == dtype and lo.shape == (p, n, m)
    ex_lo, ex_hi = _exact_range(x, w, b)
    mag = torch.matmul(torch.maximum(x[0].abs(), x[1].abs()).double(),
                       torch.maximum(w[0].abs(), w[1].abs()).double().transpose(1, 2))
    mag = mag + torch.maximum(b[0].abs(), b[1].abs()).double().unsqueeze(1)
    slack = 3 * gamma(k + 3, dtype) * mag + 4 * torch.finfo(dtype).eps * (lo.double().abs() + hi.double().abs())
    for q in range(p):
        for i in range(n):
            for j in range(m):
                assert Fraction(float(lo[q, i, j])) <= ex_lo[q][i][j] <= Fraction(float(hi[q, i, j]))
                assert Fraction(float(lo[q, i, j])) <= ex_hi[q][i][j] <= Fraction(float(hi[q, i, j]))
                tol = Fraction(float(slack[q, i, j])) + Fraction(2 * float(torch.finfo(dtype).tiny))
                assert ex_lo[q][i][j] - Fraction(float(lo[q, i, j])) <= tol
                assert Fraction(float(hi[q, i, j])) - ex_hi[q][i][j] <= tol


def test_corner_bounds_cover_float32_runs_in_any_summation_order():
    """Point boxes (lo and hi distinct tensors, equal values): the bound must still contain the float32
    products torch computes in its own order, and, under ``covering``, float64 bounds must as well."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 300, generator=gen) * 10.0 ** torch.randint(-3, 3, (1, 64, 300), generator=gen)
    w = torch.randn(1, 7, 300, generator=gen)
    run = torch.matmul(x, w.transpose(1, 2))
    lo, hi = linear_bounds(x, x.clone(), w, w.clone(), None, None)
    assert bool((lo <= run).all() and (run <= hi).all())
    with covering(torch.float32):
        lo64, hi64 = linear_bounds(x.double(), x.double().clone(), w.double(), w.double().clone(), None, None)
    assert bool((lo64 <= run.double()).all() and (run.double() <= hi64).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_products_that_underflow_to_zero_are_still_covered(dtype):
    """24 products each just below half the smallest subnormal round to 0 (and so does the magnitude
    sum), yet their exact sum is several subnormals: the absolute underflow term must cover it."""
    k, e_min = 24, {torch.float32: -149, torch.float64: -1074}[dtype]
    half = e_min // 2
    x = torch.full((1, 1, k), 2.0 ** half, dtype=dtype)
    w = torch.full((1, 1, k), 0.9 * 2.0 ** (e_min - 1 - half), dtype=dtype)
    assert float((x * w).max()) == 0.0  # every product underflows
    lo, hi = linear_bounds(x, x.clone(), w, w.clone(), None, None)
    exact = k * Fraction(float(x[0, 0, 0])) * Fraction(float(w[0, 0, 0]))
    assert Fraction(float(lo)) <= exact <= Fraction(float(hi))
    assert exact > Fraction(2.0 ** e_min)  # more than the one-ulp outward rounding alone covers


def test_subnormal_inputs_are_not_flushed_to_zero():
    """A subnormal x times a large W is a normal product (4e-10 here): a kernel that flushed
    subnormal operands to zero (as GPUs may) would bound it by the underflow term alone."""
    x = torch.full((1, 1, 4), 1e-40)
    w = torch.full((1, 1, 4), 1e30)
    assert 0.0 < float(x[0, 0, 0]) < torch.finfo(torch.float32).tiny
    lo, hi = linear_bounds(x, x.clone(), w, w.clone(), None, None)
    exact = 4 * Fraction(float(x[0, 0, 0])) * Fraction(float(w[0, 0, 0]))
    assert Fraction(float(lo)) <= exact <= Fraction(float(hi))


def test_corner_bounds_are_never_looser_than_rump_and_sign_split(monkeypatch):
    """The exact corner sums against the torch path (Rump intersected with the sign split) on the same boxes."""
    gen = torch.Generator().manual_seed(1)
    x = _box(gen, (2, 50, 40), torch.float64, 0.5, True)
    w = _box(gen, (2, 6, 40), torch.float64, 0.05, True)
    b = _box(gen, (2, 6), torch.float64, 0.05, False)
    lo, hi = linear_bounds(*x, *w, *b)
    monkeypatch.setattr(corner_matmul, "applies", lambda *a: False)
    r_lo, r_hi = linear_bounds(*x, *w, *b)
    margin = 1e-12 * (r_hi.abs() + r_lo.abs() + 1)
    assert bool((lo >= r_lo - margin).all() and (hi <= r_hi + margin).all())
    # both factors across 0: x in [-1, 2], W in [-3, 1] has the range [-6, 3]; Rump gives [-6, 5], the
    # sign split [-7, 5]
    box = lambda a, b: (torch.tensor([[[a]]], dtype=torch.float64), torch.tensor([[[b]]], dtype=torch.float64))  # noqa: E731
    r_lo, r_hi = linear_bounds(*box(-1.0, 2.0), *box(-3.0, 1.0), None, None)
    monkeypatch.undo()
    lo, hi = linear_bounds(*box(-1.0, 2.0), *box(-3.0, 1.0), None, None)
    assert -6.0 - 1e-12 < float(lo) <= -6.0 and 3.0 <= float(hi) < 3.0 + 1e-12 and float(r_hi) >= 5.0


def test_budget_axes_broadcast_and_bias_is_optional():
    gen = torch.Generator().manual_seed(2)
    x = _box(gen, (1, 9, 5), torch.float64, 0.2, True)
    w = _box(gen, (3, 4, 5), torch.float64, 0.2, True)
    b = _box(gen, (3, 4), torch.float64, 0.2, True)
    x_wide = tuple(t.expand(3, 9, 5) for t in x)  # stride 0 over the budget axis
    lo, hi = corner_linear_bounds(*x, *w, *b)
    lo_e, hi_e = corner_linear_bounds(*x_wide, *w, *b)
    assert lo.shape == (3, 9, 4) and torch.equal(lo, lo_e) and torch.equal(hi, hi_e)
    for q in range(3):
        lo_q, hi_q = corner_linear_bounds(x[0], x[1], w[0][q:q + 1], w[1][q:q + 1], b[0][q:q + 1], b[1][q:q + 1])
        assert torch.equal(lo_q[0], lo[q]) and torch.equal(hi_q[0], hi[q])
    lo0, hi0 = corner_linear_bounds(*x, *w, None, None)
    lo1, hi1 = corner_linear_bounds(*x, *w, torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))
    assert torch.equal(lo0, lo1) and torch.equal(hi0, hi1)


def test_overflow_and_infinite_inputs_give_infinite_sides_never_nan():
    big = torch.full((1, 2, 4), 3e38)
    lo, hi = linear_bounds(big * 0.5, big, big * 0.5, big, None, None)  # float32 products overflow
    assert not torch.isnan(lo).any() and bool((hi == math.inf).all())
    x_lo = torch.tensor([[[-math.inf, 1.0], [0.5, 1.0]]])
    x_hi = torch.tensor([[[2.0, 1.0], [1.0, 2.0]]])
    w = torch.tensor([[[0.0, 1.0]]])
    lo, hi = linear_bounds(x_lo, x_hi, w - 0.5, w + 0.5, None, None)
    assert lo[0, 0, 0] == -math.inf and hi[0, 0, 0] == math.inf  # the row with an infinite input
    assert torch.isfinite(lo[0, 1]).all() and torch.isfinite(hi[0, 1]).all()  # the others are untouched
    # x in [-inf, 1], W in [-1, 0]: sup x W = +inf, though the corner -inf * 0 is NaN (which hides the
    # corner -inf * -1 from the max: the magnitude term must make up for it)
    lo, hi = linear_bounds(torch.tensor([[[-math.inf]]]), torch.tensor([[[1.0]]]), torch.tensor([[[-1.0]]]),
                           torch.tensor([[[0.0]]]), None, None)
    assert hi.item() == math.inf and lo.item() == -math.inf
    w_inf = torch.tensor([[[math.inf, 1.0]]])
    lo, hi = linear_bounds(x_lo.abs(), x_hi.abs() + 1, w_inf - 1, w_inf, None, None)
    assert bool((lo == -math.inf).all() and (hi == math.inf).all())
    for nan_at in (0, 1):  # a NaN end (never produced upstream, but never trusted) loses its output
        ends = [torch.tensor([[[2.0, 1.0]]]), torch.tensor([[[3.0, 1.0]]])]
        ends[nan_at][0, 0, 0] = math.nan
        lo, hi = linear_bounds(*ends, w - 0.5, w + 0.5, None, None)
        assert lo.item() == -math.inf and hi.item() == math.inf


def test_a_bias_far_above_the_terms_keeps_their_sum_covered():
    """1 + 1000 terms of 3e-8, each below half an ulp of 1 in float32: summed from the bias up, every
    term rounds away, so the bias's magnitude must enter the rounding term."""
    b = torch.ones(1, 1)
    x, w = torch.full((1, 1, 1000), 3e-8), torch.ones(1, 1, 1000)
    lo, hi = linear_bounds(x, x.clone(), w, w.clone(), b, b.clone())
    exact = 1 + 1000 * Fraction(float(x[0, 0, 0]))
    assert Fraction(float(lo)) <= exact <= Fraction(float(hi))


def test_interval_module_keeps_the_torch_path_off_the_cpu_kernel_case():
    """Point inputs (``lo is hi``) keep Rump's form, exact for them, and never reach the kernel."""
    called = []
    x = torch.randn(1, 3, 4)
    w = torch.randn(1, 2, 4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corner_matmul, "corner_linear_bounds", lambda *a: called.append(1))
        interval.linear_bounds(x, x, w - 0.1, w + 0.1, None, None)
    assert not called
