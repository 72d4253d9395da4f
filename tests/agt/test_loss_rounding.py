"""Loss-gradient and backward bounds against exact values and float runs where rounding is largest.

exp turns the rounding of a logit difference (u times its size) into relative error, so softmax
bounds and the sum-to-zero reformulation of the cross-entropy backward pass must cover float runs
at large logit gaps: an exact value (mpmath) and float64 (and, under ``covering``, float32) runs
must lie inside.
"""
from __future__ import annotations

import mpmath
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pcert.compiler.model_builder import build_conv
from pcert.compiler.torch_model import to_torch
from pcert.runtime.agt.backward import backward_bounds
from pcert.runtime.agt.descent import _dense
from pcert.runtime.agt.losses import loss_grad_bounds, softmax_bounds
from pcert.runtime.bounds.ibp import ibp_layers, param_index
from pcert.runtime.bounds.interval import covering

mpmath.mp.dps = 60


def _exact_softmax(z: list[float]) -> list[mpmath.mpf]:
    e = [mpmath.exp(mpmath.mpf(v)) for v in z]
    s = mpmath.fsum(e)
    return [v / s for v in e]


@settings(max_examples=200, deadline=None)
@given(z=st.lists(st.floats(-300, 300, allow_nan=False), min_size=2, max_size=5))
def test_softmax_bounds_contain_exact_and_float_softmax_at_any_gap(z):
    zt = torch.tensor([z], dtype=torch.float64)
    lo, hi = softmax_bounds(zt, zt)
    for c, p in enumerate(_exact_softmax(z)):
        assert mpmath.mpf(float(lo[0, c])) <= p <= mpmath.mpf(float(hi[0, c])), (c, p)
    for run in (torch.softmax(zt, -1), torch.exp(torch.log_softmax(zt, -1))):
        assert torch.all((lo <= run) & (run <= hi))
    z32 = zt.float()
    with covering(torch.float32):  # bounds in float64 that also hold for float32 runs
        lo, hi = softmax_bounds(z32.double(), z32.double())
    for run in (torch.softmax(z32, -1), torch.exp(torch.log_softmax(z32, -1))):
        assert torch.all((lo <= run.double()) & (run.double() <= hi))


@settings(max_examples=60, deadline=None)
@given(gap=st.floats(2.0, 60.0), seed=st.integers(0, 10**6), label=st.integers(0, 2),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_cross_entropy_backward_contains_float_runs_whose_gradient_does_not_sum_to_zero(gap, seed, label, dtype):
    """A float run's softmax - onehot does not sum to 0 (p_y rounds to 1, the others stay positive): the
    backward pass that drops the last class (sum_zero) must still contain its per-sample gradients."""
    graph = build_conv("2 -> 3 -> 3", seed=0)
    gen = torch.Generator().manual_seed(seed)
    d = torch.float64
    w0, b0 = torch.randn(3, 2, generator=gen, dtype=d), torch.zeros(3, dtype=d)
    w1 = torch.randn(3, 3, generator=gen, dtype=d)
    b1 = torch.tensor([gap, 0.0, -gap / 2], dtype=d)[torch.randperm(3, generator=gen)]
    params = [w0, b0, w1, b1]
    plo = phi = [t[None] for t in params]  # point parameters: the bounds are rounding margins only
    x = torch.randn(1, 2, generator=gen, dtype=d).to(dtype).to(d)
    y = torch.tensor([label])
    with covering(dtype):
        fwd = ibp_layers(graph, plo, phi, x, x)
        g = loss_grad_bounds("cross_entropy", fwd[-1][0], fwd[-1][1], y)
        fac = backward_bounds(graph, param_index(graph), 0, 1, fwd, (x[None], x[None]), plo, phi, g, sum_zero=True)
        lo, hi = _dense(fac[0], slice(None), True)
    net = to_torch(graph, dtype=dtype)
    with torch.no_grad():
        for t, v in zip(net.parameters(), params):
            t.copy_(v.to(dtype))
    F.cross_entropy(net(x.to(dtype)), y, reduction="sum").backward()
    grad = torch.cat([t.grad.flatten() for t in net[0].parameters()]).to(d)
    assert torch.all((lo[0, 0] <= grad) & (grad <= hi[0, 0])), (lo[0, 0], grad, hi[0, 0])
