"""Descent-direction bounds (Thm 3.3) against brute force over the gradient-factor boxes they are given.

``descent_sums`` must contain sum_i g_i x_i^T (and sum_i g_i for the bias) for every choice of each
sample's factors inside its clean box, except for at most k untrusted samples per budget point, whose
factors may lie anywhere in their poisoned boxes. Per sample and weight the product is a sum over
positions of independent terms, so its exact range is the sum of the terms' corner ranges, and the
worst case over poisoned sets is that range summed over the batch plus the k most extreme
per-sample changes: the tightest bound the theorem can give, which the computed one must contain.
"""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcert.runtime.agt.backward import Factors
from pcert.runtime.agt.descent import Adversary, LayerGrads, descent_sums


def _box(gen: torch.Generator, shape: tuple[int, ...], exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A random box, often sign-definite and often crossing 0 (where Rump's and the sign-split forms differ)."""
    centre = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    if exact:
        return centre, centre
    radius = torch.rand(shape, generator=gen, dtype=torch.float64) * torch.rand((), generator=gen) * 3
    return centre - radius, centre + radius


def _widen(gen: torch.Generator, box: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A box around ``box``: the poisoned factors contain the clean ones (as the engine's do)."""
    lo, hi = box
    return (lo - torch.rand(lo.shape, generator=gen, dtype=lo.dtype) * 3,
            hi + torch.rand(hi.shape, generator=gen, dtype=hi.dtype) * 3)


def _ranges(f: Factors, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-sample ranges [P, b, F] of the weight (then bias) gradient over the factor boxes."""
    g = (f.g_lo.unsqueeze(4), f.g_hi.unsqueeze(4))  # [P, b, G, r, 1, L]
    x = (f.x_lo.unsqueeze(3), f.x_hi.unsqueeze(3))  # [P, b, G, 1, c, L]
    corners = torch.stack([a * c for a in g for c in x])
    lo, hi = corners.amin(0).sum(-1), corners.amax(0).sum(-1)  # [P, b, G, r, c]
    p, b = lo.shape[:2]
    lo, hi = lo.reshape(p, b, -1), hi.reshape(p, b, -1)
    if bias:
        lo = torch.cat((lo, f.g_lo.sum(-1).reshape(p, b, -1)), 2)
        hi = torch.cat((hi, f.g_hi.sum(-1).reshape(p, b, -1)), 2)
    return lo, hi


def _worst(clean: Factors, poisoned: Factors, bias: bool, k: list[int], untrusted: torch.Tensor | None,
           clip: float | None, unbounded: bool):
    lo, hi = _ranges(clean, bias)
    plo, phi = _ranges(poisoned, bias)
    if clip is not None:  # element-wise clipping is monotone: the clipped range is the range clipped
        lo, hi, plo, phi = (t.clamp(-clip, clip) for t in (lo, hi, plo, phi))
        if unbounded:  # a replaced point's clipped gradient is anything in [-clip, clip] (Thm B.1)
            plo, phi = torch.full_like(plo, -clip), torch.full_like(phi, clip)
    d_lo, d_hi = (plo - lo).clamp(max=0), (phi - hi).clamp(min=0)
    if untrusted is not None:
        keep = untrusted.view(1, -1, 1)
        d_lo, d_hi = torch.where(keep, d_lo, 0.0), torch.where(keep, d_hi, 0.0)
    worst_lo, worst_hi = [], []
    for q, kq in enumerate(k):
        take = lambda d, largest: d.topk(kq, dim=0, largest=largest).values.sum(0) if kq else 0.0  # noqa: E731
        worst_lo.append(lo[q].sum(0) + take(d_lo[q], False))
        worst_hi.append(hi[q].sum(0) + take(d_hi[q], True))
    return torch.stack(worst_lo), torch.stack(worst_hi)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10**6), b=st.integers(1, 5), positions=st.integers(1, 3), groups=st.integers(1, 2),
       rows=st.integers(1, 3), cols=st.integers(1, 3), k=st.lists(st.integers(0, 5), min_size=1, max_size=3),
       exact_x=st.booleans(), moved=st.booleans(), bias=st.booleans(), masked=st.booleans(),
       clip=st.sampled_from([None, 2.0]), unbounded=st.booleans())
def test_descent_bounds_contain_every_poisoned_batch_sum(seed, b, positions, groups, rows, cols, k, exact_x, moved,
                                                         bias, masked, clip, unbounded):
    gen = torch.Generator().manual_seed(seed)
    p = len(k)
    g_clean = _box(gen, (p, b, groups, rows, positions), exact=False)
    x_clean = _box(gen, (1, b, groups, cols, positions), exact=exact_x)
    clean = Factors(*g_clean, *x_clean)
    x_pois = _widen(gen, x_clean) if moved else x_clean
    poisoned = Factors(*_widen(gen, g_clean), *x_pois)
    nominal = ((g_clean[0] + g_clean[1])[:1] / 2, (x_clean[0] + x_clean[1]) / 2)
    untrusted = torch.rand(b, generator=gen) < 0.6 if masked else None
    budget = [min(kq, b if untrusted is None else int(untrusted.sum())) for kq in k]
    unbounded = unbounded and clip is not None  # the unbounded adversary needs clipping (Thm B.1)
    adv = Adversary(budget, [unbounded] * p, clip, "element", untrusted, [moved] * p)
    lg = LayerGrads(None, clean, poisoned, nominal, bias)
    [(lo, hi)], _ = descent_sums([lg], adv)
    ref_lo, ref_hi = _worst(clean, poisoned, bias, budget, untrusted, clip, unbounded)
    assert torch.all(lo <= ref_lo), (lo - ref_lo).max()
    assert torch.all(hi >= ref_hi), (ref_hi - hi).max()
    # where every per-sample form is the exact range the bound is the worst case, up to rounding terms
    # (the float32 top-k of linear layers has the largest): layers summed over positions or groups, and
    # clipped ones, evaluate exact corner sums per sample (points without a top-k use matmul sums,
    # exact when the input is a point); the sign split of linear layers is exact for point inputs
    streamed = positions > 1 or groups > 1 or clip is not None
    exact = [(streamed and (kq > 0 or clip is not None)) or (exact_x and not moved) for kq in budget]
    # the terms scale with (batch + k) x the largest per-sample |G||X| (``descent._linear_error``)
    mag = lambda f: max(float(t.abs().max()) for t in (f.g_lo, f.g_hi)) * max(float(t.abs().max())  # noqa: E731
                                                                         for t in (f.x_lo, f.x_hi))
    tol = 1e-5 * (1.0 + (b + max(budget)) * positions * max(mag(clean), mag(poisoned)))
    for q in (q for q, e in enumerate(exact) if e):
        assert torch.allclose(lo[q], ref_lo[q], rtol=0, atol=tol) and torch.allclose(hi[q], ref_hi[q], rtol=0, atol=tol)


def test_layer_with_positions_whose_clean_terms_are_sign_definite_keeps_its_poisoned_sample():
    """The case Rump's batch product intersected with the sign split got wrong: clean factors [1, 3] at
    two positions (Rump's lower end -1 each, the sign split's 1), a poisoned sample's g in [-3, 3]
    reaches -18; the sum must be of the same per-sample bounds whose differences enter the top-k."""
    full = lambda v: torch.full((1, 1, 1, 1, 2), float(v), dtype=torch.float64)  # noqa: E731
    clean = Factors(full(1), full(3), full(1), full(3))
    poisoned = Factors(full(-3), full(3), full(1), full(3))
    lg = LayerGrads(None, clean, poisoned, (full(2), full(2)), False)
    [(lo, hi)], _ = descent_sums([lg], Adversary([1], [False], None, "element", None, [True]))
    assert float(lo) <= -18.0 and float(hi) >= 18.0
