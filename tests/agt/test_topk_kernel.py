"""The fused CPU top-k kernel against torch.topk over materialised per-sample differences."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from pcert.runtime.agt.descent import _streamed_topk
from pcert.runtime.agt.topk_kernel import outer_topk


def _reference(lhs, rhs_hi, rhs_lo, keep, k):
    """Exact float64 top-k sums per budget point and coordinate: [P, O * J] each."""
    q = rhs_hi.shape[0]
    d_hi = torch.einsum("pbor,pbrj->pboj", lhs, rhs_hi.expand(lhs.shape[0], *rhs_hi.shape[1:]) if q == 1 else rhs_hi)
    d_lo = torch.einsum("pbor,pbrj->pboj", lhs, rhs_lo.expand(lhs.shape[0], *rhs_lo.shape[1:]) if q == 1 else rhs_lo)
    d_hi, d_lo = d_hi.clamp(min=0).flatten(2), d_lo.clamp(max=0).flatten(2)
    if keep is not None:
        d_hi = torch.where(keep.view(1, -1, 1), d_hi, -math.inf)
        d_lo = torch.where(keep.view(1, -1, 1), d_lo, math.inf)
    return d_hi.topk(k, 1).values.sum(1), d_lo.topk(k, 1, largest=False).values.sum(1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.integers(1, 3), shared=st.booleans(), k=st.integers(1, 12),
       masked=st.booleans(), heavy=st.booleans())
def test_kernel_topk_sums_match_exact(seed, p, shared, k, masked, heavy):
    g = torch.Generator().manual_seed(seed)
    b, o, j, r = 60, 11, 9, 6
    scale = torch.rand(b, 1, 1, generator=g, dtype=torch.float64) ** (8 if heavy else 1)
    lhs = torch.randn(p, b, o, r, generator=g, dtype=torch.float64) * scale
    lhs = torch.where(torch.rand(lhs.shape, generator=g) < 0.4, 0.0, lhs)  # sign splits are sparse
    q = 1 if shared else p
    rhs_hi = torch.randn(q, b, r, j, generator=g, dtype=torch.float64)
    rhs_lo = torch.randn(q, b, r, j, generator=g, dtype=torch.float64)
    keep = torch.rand(b, generator=g) < 0.7 if masked else None
    kk = min(k, b if keep is None else int(keep.sum()))
    if kk == 0:
        return
    hi, lo = outer_topk(lhs, rhs_hi, rhs_lo, keep, kk)
    ref_hi, ref_lo = _reference(lhs, rhs_hi, rhs_lo, keep, kk)
    mag = torch.einsum("pbor,qbrj->pboj", lhs.abs(), (rhs_hi.abs() + rhs_lo.abs())).flatten(2).sum(1)
    tol = 1e-6 * mag + 1e-30  # the a-priori float32 term descent.py adds is gamma_10 * 2 * (sum |G||X|)
    assert torch.all((hi.double().sum(1) - ref_hi).abs() <= tol)
    assert torch.all((lo.double().sum(1) - ref_lo).abs() <= tol)
    # the GPU path (torch) computes the same values
    t_hi, t_lo = _streamed_topk(lhs.float(), rhs_hi.float(), rhs_lo.float(), keep, kk)
    assert torch.all((t_hi.double().sum(1) - ref_hi).abs() <= tol)
    assert torch.all((t_lo.double().sum(1) - ref_lo).abs() <= tol)


@pytest.mark.parametrize("bad", [math.inf, math.nan, 1e30])
def test_kernel_gives_up_soundly_on_huge_or_nonfinite_values(bad):
    lhs = torch.ones(1, 4, 2, 2, dtype=torch.float64)
    rhs = torch.ones(1, 4, 2, 3, dtype=torch.float64)
    rhs_bad = rhs.clone()
    rhs_bad[0, 1, 0, 2] = bad
    lhs_bad = lhs * (1e30 if bad == 1e30 else 1.0)
    hi, lo = outer_topk(lhs_bad, rhs_bad, rhs, None, 2)
    assert torch.all(hi == math.inf) and torch.all(lo == -math.inf)
