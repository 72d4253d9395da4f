"""The fused top-k kernels (numba on the CPU, Triton on CUDA) against exact top-k sums of materialised
per-sample differences."""
import math
from unittest import mock

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from pcert.runtime.agt import topk_kernel
from pcert.runtime.agt.descent import _streamed_topk
from pcert.runtime.agt.topk_kernel import outer_topk


def _split(coef, rows):
    """The kernel's inputs from tensors: coef [P, b, O, M, 2] -> per row (c+, c-); rows [Q, b, M, J] -> M rows."""
    return [(coef[..., m, 0], coef[..., m, 1]) for m in range(coef.shape[3])], [rows[:, :, m] for m in range(rows.shape[2])]


def _topk(fn, coef_hi, coef_lo, rows, keep, k):
    (hi, rs), (lo, _) = _split(coef_hi, rows), _split(coef_lo, rows)
    return fn(hi, lo, rs, keep, k)


def _differences(coef, rows):
    """d[p, i, o, j] = sum_m c[.., m, 0] max(u_m, 0) + c[.., m, 1] min(u_m, 0), in float64."""
    signed = torch.stack((rows.clamp(min=0), rows.clamp(max=0)), 3).flatten(2, 3)  # [Q, b, 2M, J]
    p, b, o = coef.shape[:3]
    return torch.einsum("pbor,pbrj->pboj", coef.reshape(p, b, o, -1), signed.expand(p, *signed.shape[1:]))


def _reference(coef_hi, coef_lo, rows, keep, k):
    """Exact float64 top-k sums per budget point and coordinate: [P, O * J] each."""
    d_hi = _differences(coef_hi, rows).clamp(min=0).flatten(2)
    d_lo = _differences(coef_lo, rows).clamp(max=0).flatten(2)
    if keep is not None:
        d_hi = torch.where(keep.view(1, -1, 1), d_hi, -math.inf)
        d_lo = torch.where(keep.view(1, -1, 1), d_lo, math.inf)
    return d_hi.topk(k, 1).values.sum(1), d_lo.topk(k, 1, largest=False).values.sum(1)


def _random_case(seed, p, shared, k, m, masked, heavy, shape, near=False, sparse=False):
    g = torch.Generator().manual_seed(seed)
    b, (o, j) = 60, shape  # (13, 2): short rows, run transposed; (3, 150): rows of several tiles
    scale = torch.rand(1, b, 1, 1, 1, generator=g, dtype=torch.float64) ** (8 if heavy else 1)
    coefs = [torch.randn(p, b, o, m, 2, generator=g, dtype=torch.float64) * scale for _ in range(2)]
    coefs = [torch.where(torch.rand(c.shape, generator=g) < 0.4, 0.0, c) for c in coefs]  # sign splits are sparse
    q = 1 if shared else p
    rows = torch.randn(q, b, m, j, generator=g, dtype=torch.float64)
    if near:  # as clean and poisoned factors: rows within a small box of the last, coefficients nearly cancel
        rows[:, :, :-1] = rows[:, :, -1:] + 0.01 * torch.randn(q, b, m - 1, j, generator=g, dtype=torch.float64)
        for c in coefs:
            c[..., -1, :] = -c[..., :-1, :].sum(-2) + 0.05 * torch.randn(p, b, o, 2, generator=g, dtype=torch.float64)
    if sparse:  # like image pixels: mostly exactly 0, some inputs 0 in every sample
        rows = torch.where(torch.rand(rows.shape, generator=g) < 0.6, 0.0, rows)
        rows[..., :j // 3] = 0.0
    keep = torch.rand(b, generator=g) < 0.7 if masked else None
    return coefs, rows, keep, min(k, b if keep is None else int(keep.sum()))


def _assert_matches_exact(fn, coefs, rows, keep, kk):
    """fn's top-k sums lie within the a-priori float32 term descent.py adds of the exact ones."""
    hi, lo = _topk(fn, *coefs, rows, keep, kk)
    ref_hi, ref_lo = _reference(*coefs, rows, keep, kk)
    # the a-priori float32 term descent.py adds: gamma_10 * 2 * k * (largest per-sample |G||X|)
    mag = [torch.einsum("pbom,qbmj->pboj", c.abs().sum(-1), rows.abs()).flatten(2).amax(1) for c in coefs]
    tol = [1.2e-6 * kk * mg + 1e-30 for mg in mag]
    assert torch.all((hi.double().sum(1) - ref_hi).abs() <= tol[0])
    assert torch.all((lo.double().sum(1) - ref_lo).abs() <= tol[1])


_CASES = dict(seed=st.integers(0, 10_000), p=st.integers(1, 3), shared=st.booleans(), k=st.integers(1, 12),
              m=st.integers(1, 4), masked=st.booleans(), heavy=st.booleans(),
              shape=st.sampled_from([(11, 9), (13, 2), (3, 150)]))


@settings(max_examples=80, deadline=None)
@given(**_CASES, near=st.booleans(), sparse=st.booleans(), seeds=st.sampled_from([0, 1, 16]),
       walk=st.sampled_from([1, 8, 10**6]), buckets=st.sampled_from([1, 32]), listed=st.sampled_from([0.0, 1 / 16, 1.0]))
def test_kernel_topk_sums_match_exact(seed, p, shared, k, m, masked, heavy, shape, near, sparse, seeds, walk, buckets,
                                      listed):
    coefs, rows, keep, kk = _random_case(seed, p, shared, k, m, masked, heavy, shape, near, sparse)
    if kk == 0:
        return
    # few seeds per k: most samples go through the filtered pass, not the dense seeding (small layers
    # are evaluated densely unless told otherwise); that pass walks a sample's inputs by |r_j| (walk 1:
    # always) or evaluates whole rows (walk 10**6: always), with one or many buckets, and inputs near
    # 0 are listed for the pass before it or left to it
    with mock.patch.multiple(topk_kernel, _MIN_SEEDS=0, _SEEDS=seeds, _DENSE_ELEMENTS=0 if seeds < 16 else 1 << 24,
                             _GATHER_COST=walk, _BUCKETS=buckets, _LISTED=listed):
        _assert_matches_exact(outer_topk, coefs, rows, keep, kk)
    # the torch fallback for accelerators without Triton computes the same values
    _assert_matches_exact(_streamed_topk, [c.float() for c in coefs], rows.float(), keep, kk)


@numba.njit
def _kernel_view(coef, rows, fac, dev, r_ext):
    """What the kernel sees per (p, o, i, j) and side: its float32 value of d, its pruning bound, and
    the bound it tests a whole tile of inputs with."""
    p_n, b_n, o_n = coef.shape[0], coef.shape[1], coef.shape[2]
    q_n, _, m_n, j_n = rows.shape
    value = np.zeros((p_n, o_n, b_n, j_n, 2))
    bound = np.zeros((p_n, o_n, b_n, j_n, 2))
    tile = np.zeros((p_n, o_n, b_n, j_n, 2))
    for p in range(p_n):
        q = p if q_n > 1 else 0
        for o in range(o_n):
            for i in range(b_n):
                d = dev[q, i]
                for j in range(j_n):
                    hi, lo = topk_kernel._value(coef, rows, p, q, i, o, j)
                    value[p, o, i, j, 0], value[p, o, i, j, 1] = hi, lo
                    for side in range(2):
                        f = fac[p, i, o, 8 * side:8 * side + 7]
                        bound[p, o, i, j, side] = topk_kernel._side_bound(f[0], f[1], f[2], f[3], f[4], f[5], f[6],
                                                                          rows[q, i, m_n - 1, j], d)
                        e = r_ext[q, i, j // topk_kernel._TILE]
                        tile[p, o, i, j, side] = topk_kernel._tile_bound(f[0], f[1], f[2], f[3], f[4], f[5], f[6],
                                                                         e[0], e[1], e[2], e[3])
    return value, bound, tile


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 4), shared=st.booleans(), scale=st.sampled_from([1.0, 0.01]),
       spread=st.sampled_from([0.0, 0.003, 0.01, 0.03, 1.0]), cancel=st.sampled_from([None, 0.01, 0.0]))
def test_pruning_bound_holds_for_every_value(seed, m, shared, scale, spread, cancel):
    """The per-sample bound the kernel prunes with lies above |d| for every (sample, weight) and side,
    exactly (float64 on the kernel's float32 inputs) and as the kernel computes d (float32), in every
    region: rows far from 0 (one sign), and rows around 0 whose other rows lie across it."""
    g = torch.Generator().manual_seed(seed)
    p, b, o, j = 2, 12, 5, 150
    coefs = [torch.randn(p, b, o, m, 2, generator=g, dtype=torch.float64) for _ in range(2)]
    coefs = [torch.where(torch.rand(c.shape, generator=g) < 0.3, 0.0, c) for c in coefs]
    if cancel is not None:  # clean minus poisoned factors: the last row's coefficients (nearly) cancel the others'
        for c in coefs:
            c[..., -1, :] = -c[..., :-1, :].sum(-2) + cancel * torch.randn(p, b, o, 2, generator=g, dtype=torch.float64)
    q = 1 if shared else p
    r = scale * torch.randn(q, b, 1, j, generator=g, dtype=torch.float64)
    rows = torch.cat([r + spread * (2 * torch.rand(q, b, m - 1, j, generator=g, dtype=torch.float64) - 1), r], 2)
    (hi, rs), (lo, _) = _split(coefs[0], rows), _split(coefs[1], rows)
    coef, row_t, dev, r_ext, fac, _ = topk_kernel._layouts(hi, lo, rs)
    assert np.all(dev >= np.abs(row_t - row_t[:, :, -1:]).max((2, 3)))
    value, bound, tile = _kernel_view(coef, row_t, fac, dev, r_ext)
    signed = np.stack((np.maximum(row_t, 0), np.minimum(row_t, 0)), 3).astype(np.float64)  # [Q, b, M, 2, J]
    exact = np.einsum("pbosmt,pbmtj->pobjs", coef.astype(np.float64), np.broadcast_to(signed, (p, *signed.shape[1:])))
    for d in (np.abs(exact), np.abs(value)):
        assert np.all(d <= bound) and np.all(d <= tile)


def test_tile_bound_covers_rows_across_zero():
    """A value the box terms of either sign alone cannot bound: rows on both sides of 0 around a
    reference input within D of 0 (d = 1.4 where the larger outer bound is D = 1); the tile also holds
    an input far from 0, and the kernel, told to prune everything it can, still finds the value."""
    rows = torch.tensor([[1.6, 5.0], [-0.4, 4.0], [0.6, 5.0]], dtype=torch.float64)  # u_0, u_1, r over 2 inputs
    coef = torch.tensor([[1.0, 0.0], [0.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # (c+, c-) per row
    coefs = [coef.expand(1, 2, 1, 3, 2).clone() for _ in range(2)]
    coefs[1][:, 1] = 0.0  # the second sample: a zero lower side
    rows = torch.stack((rows, torch.zeros_like(rows)), 0).unsqueeze(0)  # [1, b = 2, M, J]
    (hi, rs), (lo, _) = _split(coefs[0], rows), _split(coefs[1], rows)
    coef_l, row_t, dev, r_ext, fac, _ = topk_kernel._layouts(hi, lo, rs)
    value, _, tile = _kernel_view(coef_l, row_t, fac, dev, r_ext)
    assert value[0, 0, 0, 0, 0] == pytest.approx(1.4)
    assert np.all(np.abs(value) <= tile)
    with mock.patch.multiple(topk_kernel, _MIN_SEEDS=0, _SEEDS=0, _DENSE_ELEMENTS=0):
        _assert_matches_exact(outer_topk, coefs, rows, None, 1)


@pytest.mark.parametrize("low", [False, True])
def test_the_walk_by_decreasing_input_reaches_every_value_above_the_floor(low):
    """d_i[j] = |r_i[j]| (the bound is exact). The first 64 samples set the thresholds of inputs
    1-14 to 5, and of input 0 to 5 or (low) 1; input 15 is 0 in every sample (its threshold stays 0,
    below any floor worth walking to, so the floor leaves it out). Sample 64's values 6 (input 1)
    and 2 (input 0, low) top the buckets whose bounds just reach the floor, and the walk must find
    them; its other values, 0.5, lie below it."""
    b, j = 70, 16
    coefs = [torch.zeros(1, b, 1, 1, 2, dtype=torch.float64) for _ in range(2)]
    coefs[0][..., 0], coefs[0][..., 1] = 1.0, -1.0  # hi side: max(r, 0) - min(r, 0) = |r|
    rows = torch.full((1, b, 1, j), 5.0, dtype=torch.float64)
    rows[0, 64:, 0, :15] = 0.5
    rows[0, :, 0, 15] = 0.0
    rows[0, 64, 0, 1] = -6.0
    if low:
        rows[0, :64, 0, 0] = 1.0
        rows[0, 64, 0, 0] = 2.0
    with mock.patch.multiple(topk_kernel, _MIN_SEEDS=0, _SEEDS=0, _DENSE_ELEMENTS=0, _GATHER_COST=8):
        hi, _ = _topk(outer_topk, *coefs, rows, None, 1)
    assert hi.flatten().tolist() == [2.0 if low else 5.0, 6.0] + [5.0] * (j - 3) + [0.0]


def test_inputs_near_zero_are_evaluated_before_the_pass_that_skips_them():
    """Sample 1's only large value sits where its reference input is 0 (within D of it): the seed
    (sample 0) leaves that input's threshold at 1 and the other's at 10; the value 5 must still be
    found, by the listed pairs' pass before the filtered one (which leaves such pairs out)."""
    b = 40
    coefs = [torch.zeros(1, b, 1, 2, 2, dtype=torch.float64) for _ in range(2)]
    rows = torch.ones(1, b, 2, 2, dtype=torch.float64)  # (u_0, r) x 2 inputs; the others: all zero values
    coefs[0][0, 0, 0, 0, 0] = 1.0  # sample 0: values 10 and 1, the largest reach: the one seed
    rows[0, 0] = torch.tensor([[10.0, 1.0], [10.0, 1.0]])
    coefs[0][0, 1, 0, :, 0] = torch.tensor([5.0, -5.0])  # sample 1: 5 (3 - 3) = 0 at input 0, 5 * 1 at input 1
    rows[0, 1] = torch.tensor([[3.0, 1.0], [3.0, 0.0]])
    with mock.patch.multiple(topk_kernel, _MIN_SEEDS=0, _SEEDS=1, _DENSE_ELEMENTS=0):
        hi, _ = _topk(outer_topk, *coefs, rows, None, 1)
    assert hi.flatten().tolist() == [10.0, 5.0]


def test_rows_laid_out_once_serve_every_call_with_equal_rows_and_only_those():
    """The memo a layer keeps across its budget points: a call with equal rows (another tensor with the
    same values) reuses the rows' layout, rows with other values or changed in place do not, and every
    call's top-k equals a fresh call's."""
    coefs, rows, _, kk = _random_case(3, 1, True, 4, 3, False, False, (3, 150), near=True)
    other_coefs, other_rows, _, _ = _random_case(4, 1, True, 4, 3, False, False, (3, 150), near=True)
    memo = {}
    with mock.patch.multiple(topk_kernel, _MIN_SEEDS=0, _SEEDS=1, _DENSE_ELEMENTS=0):  # walked: orders are made
        def call(cs, rs):
            (hi, us), (lo, _) = _split(cs[0].float(), rs.float()), _split(cs[1].float(), rs.float())
            got = outer_topk(hi, lo, us, None, kk, memo=memo)
            fresh = outer_topk(hi, lo, us, None, kk)
            assert all(torch.equal(a, b) for a, b in zip(got, fresh))
            return us
        us = call(coefs, rows)
        first = memo["rows"]
        assert first.order is not None
        call(other_coefs, rows.clone())  # equal rows, other coefficients
        assert memo["rows"] is first
        call(coefs, other_rows)
        assert memo["rows"] is not first
        (hi, us), (lo, _) = _split(coefs[0].float(), other_rows.float()), _split(coefs[1].float(), other_rows.float())
        memo.clear()
        outer_topk(hi, lo, us, None, kk, memo=memo)
        own = memo["rows"]
        outer_topk(hi, lo, us, None, kk, memo=memo)
        assert memo["rows"] is own  # the very tensors
        us[0].mul_(2.0)  # changed in place: still the very tensors, but the layout is stale
        got = outer_topk(hi, lo, us, None, kk, memo=memo)
        assert memo["rows"] is not own
        assert all(torch.equal(a, b) for a, b in zip(got, outer_topk(hi, lo, us, None, kk)))


@pytest.fixture()
def interpreted_triton(monkeypatch):
    """The Triton kernel run by Triton's interpreter on the CPU: the CUDA kernel's code, indexing
    and masks, checked where no GPU is (tests/gpu checks it compiled, on a device)."""
    pytest.importorskip("triton")
    from pcert.runtime.agt import topk_triton
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    # small batch slices, so that these small batches are split and the slices' lists merged
    monkeypatch.setattr(topk_triton, "_MIN_SAMPLES_PER_PROGRAM", 8)
    monkeypatch.setattr(topk_triton, "_SPLIT_STEP", 8)
    topk_triton._kernel.cache_clear()
    yield topk_triton.outer_topk_triton
    topk_triton._kernel.cache_clear()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**_CASES)  # the fixture only selects the interpreter: nothing to reset between examples
def test_triton_kernel_topk_sums_match_exact(interpreted_triton, seed, p, shared, k, m, masked, heavy, shape):
    coefs, rows, keep, kk = _random_case(seed, p, shared, k, m, masked, heavy, shape)
    if kk == 0:
        return
    _assert_matches_exact(interpreted_triton, [c.float() for c in coefs], rows.float(), keep, kk)


def _unit_inputs():
    return {"coef_hi": torch.ones(1, 4, 2, 1, 2, dtype=torch.float64),
            "coef_lo": torch.ones(1, 4, 2, 1, 2, dtype=torch.float64),
            "rows": torch.ones(1, 4, 1, 3, dtype=torch.float64)}


def _poke(t: torch.Tensor, value: float) -> None:
    t.view(-1)[t.numel() // 2 + 1] = value


@pytest.fixture(params=["numba", "triton"])
def kernel(request):
    return outer_topk if request.param == "numba" else request.getfixturevalue("interpreted_triton")


@pytest.mark.parametrize("where", ["rows", "coef_hi", "coef_lo"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, "overflow"])
def test_kernel_gives_up_soundly_on_huge_or_nonfinite_values(kernel, bad, where):
    inputs = _unit_inputs()
    if bad == "overflow":  # each factor finite, their product beyond what float32 sums may hold
        _poke(inputs[where], 1e20)
        inputs["rows" if where != "rows" else "coef_hi"].mul_(1e20)
    else:
        _poke(inputs[where], bad)
    hi, lo = _topk(kernel, inputs["coef_hi"], inputs["coef_lo"], inputs["rows"], None, 2)
    assert torch.all(hi == math.inf) and torch.all(lo == -math.inf)


def test_kernel_keeps_large_finite_values(kernel):
    inputs = _unit_inputs()
    inputs["rows"][0, 1, 0, 2] = 1e30  # d = 1e30 at coordinates (o, 2) of sample 1: still exact
    hi, lo = _topk(kernel, inputs["coef_hi"], inputs["coef_lo"], inputs["rows"], None, 2)
    assert torch.all(torch.isfinite(hi)) and hi.amax() == torch.tensor(1e30) and torch.all(lo == 0.0)


@pytest.mark.parametrize("accelerated", ["streamed", "triton"])
def test_training_with_the_accelerator_top_k_matches_the_cpu_kernel(monkeypatch, request, accelerated):
    """The accelerator code paths (the Triton kernel; chunked matmuls + torch.topk without Triton)
    wired into a real AGT run on the CPU: the same bounds as the numba kernel up to float32
    rounding of the kept values."""
    import numpy as np

    from pcert.compiler.model_builder import build_conv
    from pcert.runtime.agt import BudgetPoint, TrainConfig, train_with_bounds
    from pcert.runtime.agt import descent

    graph = build_conv("2 -> 16 -> relu -> 3", seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 2)).astype(np.float32), rng.integers(0, 3, 90)
    cfg = TrainConfig(epochs=2, batch=30, lr=0.5)
    points = [BudgetPoint(n=3, eps=0.05), BudgetPoint(m=2), BudgetPoint(n=1, eps=0.02, m=1, paired=True)]
    kernel = train_with_bounds(graph, x, y, cfg, points)
    fn = descent._streamed_topk if accelerated == "streamed" else request.getfixturevalue("interpreted_triton")
    monkeypatch.setattr(descent, "_topk_for", lambda device, memo: fn)
    streamed = train_with_bounds(graph, x, y, cfg, points)
    for a, b in zip(kernel.lower + kernel.upper, streamed.lower + streamed.upper):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
