"""The compiled Triton corner-sum kernel on a CUDA device (skipped elsewhere): exact ranges rounded
outward, no flushing of subnormals, NaN and inf handled, and the CPU kernel's bounds to rounding."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from pcert.runtime.bounds import corner_matmul
from pcert.runtime.bounds.interval import gamma, linear_bounds

from test_corner_matmul import _box, _exact_range

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda(*pairs):
    return [t.cuda() for pair in pairs for t in pair]


@pytest.mark.parametrize("seed", range(6))
def test_cuda_corner_bounds_contain_the_exact_range_and_match_the_cpu_kernel(seed):
    dtype = (torch.float32, torch.float64)[seed % 2]
    gen = torch.Generator().manual_seed(seed)
    p, n, k, m = 1 + seed % 2, 40 + seed, 1 + 37 * seed, 3 + 11 * (seed % 3)  # tiles with ragged edges
    x, w, b = _box(gen, (p, n, k), dtype, 0.3, True), _box(gen, (p, m, k), dtype, 0.3, True), _box(gen, (p, m), dtype, 0.3, False)
    assert corner_matmul.applies(x[0].cuda(), w[0].cuda())
    lo, hi = (t.cpu() for t in linear_bounds(*_cuda(x, w, b)))
    ex_lo, ex_hi = _exact_range(x, w, b)
    for q in range(p):
        for i in range(n):
            for j in range(m):
                assert Fraction(float(lo[q, i, j])) <= ex_lo[q][i][j] and ex_hi[q][i][j] <= Fraction(float(hi[q, i, j]))
    c_lo, c_hi = linear_bounds(*x, *w, *b)  # the numba kernel: the same sums up to their order
    mag = torch.matmul(torch.maximum(x[0].abs(), x[1].abs()), torch.maximum(w[0].abs(), w[1].abs()).transpose(1, 2))
    tol = 4 * gamma(k + 3, dtype) * (mag + torch.maximum(b[0].abs(), b[1].abs()).unsqueeze(1)) + 1e-30
    assert bool(((lo - c_lo).abs() <= tol).all() and ((hi - c_hi).abs() <= tol).all())


def test_cuda_subnormals_underflow_and_non_finite_inputs():
    x, w = torch.full((1, 1, 4), 1e-40), torch.full((1, 1, 4), 1e30)  # subnormal x: a normal product
    lo, hi = linear_bounds(*_cuda((x, x.clone()), (w, w.clone())), None, None)
    exact = 4 * Fraction(float(x[0, 0, 0])) * Fraction(float(w[0, 0, 0]))
    assert Fraction(lo.item()) <= exact <= Fraction(hi.item())
    x, w = torch.full((1, 1, 24), 2.0 ** -75), torch.full((1, 1, 24), 0.9 * 2.0 ** -75)  # every product underflows
    lo, hi = linear_bounds(*_cuda((x, x.clone()), (w, w.clone())), None, None)
    exact = 24 * Fraction(float(x[0, 0, 0])) * Fraction(float(w[0, 0, 0]))
    assert Fraction(lo.item()) <= exact <= Fraction(hi.item())
    w = torch.tensor([[[1.0, 1.0]]])
    for bad in (math.nan, -math.inf):
        x_lo, x_hi = torch.tensor([[[bad, 1.0], [0.5, 1.0]]]), torch.tensor([[[2.0, 1.0], [1.0, 2.0]]])
        lo, hi = (t.cpu() for t in linear_bounds(*_cuda((x_lo, x_hi), (w - 0.5, w + 0.5)), None, None))
        assert lo[0, 0, 0] == -math.inf and hi[0, 0, 0] == math.inf
        assert torch.isfinite(lo[0, 1]).all() and torch.isfinite(hi[0, 1]).all()
