"""Soundness against real poisoned training: brute force on tiny batches, and attack campaigns.

Every attacked SGD run (plain torch, per step) must stay inside the AGT bounds of its budget point
after every step, and every certified test point must be predicted the same by every attacked
model. Default bounds (cover="nominal") promise exact-arithmetic and float64 runs: checked with
float64 attacked runs. cover="all" promises every float32 run: checked with float32 attacked runs.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcert.compiler.model_builder import build_conv
from pcert.compiler.torch_model import to_torch
from pcert.runtime.agt import BudgetPoint, Objective, TrainConfig, certify, train_with_bounds
from pcert.runtime.agt.training import batch_order


def _moons(n: int, seed: int):
    from sklearn.datasets import make_moons
    x, y = make_moons(n, noise=0.15, random_state=seed)
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32), y  # the float32 run's own data


def _record(graph, x, y, cfg, points, trusted=None, cover="nominal"):
    steps: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    res = train_with_bounds(graph, x, y, cfg, points, trusted=trusted, cover=cover,
                            on_step=lambda t, nom, lo, hi: steps.append(([a.clone() for a in lo], [a.clone() for a in hi])))
    return res, steps


def _per_sample_grads(model, params, xb, yb):
    names = [n for n, _ in model.named_parameters()]

    def one(ps, xi, yi):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (xi[None],))
        return F.cross_entropy(out, yi[None])

    return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(tuple(p.detach() for p in params), xb, yb)


def attacked_run(graph, x, y, cfg: TrainConfig, poison, dtype=torch.float64) -> list[list[torch.Tensor]]:
    """Plain SGD in ``dtype`` where ``poison(t, idx, xb, yb, model)`` rewrites each batch first."""
    model = to_torch(graph, dtype=dtype)
    params = list(model.parameters())
    frozen = sum(1 if layer.bias is None else 2 for layer in graph.parametric_layers[:cfg.frozen])
    assert not (frozen and cfg.clip is not None), "clipped per-sample gradients of frozen nets: not modelled here"
    xt, yt = torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=torch.long)
    bufs = [None] * len(params)
    trace = []
    for t, (_, idx) in enumerate(batch_order(len(x), cfg)):
        xb, yb = poison(t, idx, xt[idx].clone(), yt[idx].clone(), model)
        if cfg.clip is None:
            grads = torch.autograd.grad(F.cross_entropy(model(xb), yb), params)
            grads = [torch.zeros_like(g) if i < frozen else g for i, g in enumerate(grads)]  # frozen: never moves
        else:
            per = _per_sample_grads(model, params, xb, yb)
            if cfg.clip_method == "element":
                per = [g.clamp(-cfg.clip, cfg.clip) for g in per]
            else:
                norm = torch.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in per))
                per = [g * torch.clamp(cfg.clip / norm, max=1.0).view(-1, *[1] * (g.dim() - 1)) for g in per]
            grads = [g.mean(0) for g in per]
        lr = cfg.lr / (1 + cfg.lr_decay * t)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                bufs[i] = g.clone() if bufs[i] is None or not cfg.momentum else bufs[i] * cfg.momentum + g
                p.add_(bufs[i], alpha=-lr)
        trace.append([p.detach().clone() for p in params])
    return trace


def _assert_inside(trace, steps, q: int, what: str):
    assert len(trace) == len(steps)
    for t, (params, (lo, hi)) in enumerate(zip(trace, steps)):
        for j, (a, l_, h_) in enumerate(zip(params, lo, hi)):
            a64 = a.to(l_.dtype)
            assert bool(((l_[q] <= a64) & (a64 <= h_[q])).all()), f"{what}: step {t}, param {j} escapes its bounds"


# --------------------------------------------------------------------------------------------
# brute force: every poisoning of a 4-point batch over two steps


def _enumerate(graph, x, y, cfg, options_per_step, steps, q, dtype=torch.float64):
    """Run every sequence of per-step poisonings; each must stay inside point q's bounds."""
    count = 0
    for seq in itertools.product(options_per_step, repeat=len(steps)):
        def poison(t, idx, xb, yb, model, seq=seq):
            return seq[t](idx, xb, yb)
        _assert_inside(attacked_run(graph, x, y, cfg, poison, dtype), steps, q, f"sequence {seq}")
        count += 1
    return count


def _label_option(row: int, label: int):
    def f(idx, xb, yb):
        yb[row] = label
        return xb, yb
    return f


def _feature_option(row: int, delta, label: int | None = None):
    def f(idx, xb, yb):
        xb[row] += torch.as_tensor(delta, dtype=xb.dtype)
        if label is not None:
            yb[row] = label
        return xb, yb
    return f


def _replace_option(row: int, point, label: int):
    def f(idx, xb, yb):
        xb[row] = torch.as_tensor(point, dtype=xb.dtype)
        yb[row] = label
        return xb, yb
    return f


def _none(idx, xb, yb):
    return xb, yb


def test_brute_force_label_feature_and_paired_poisoning_stays_inside():
    graph = build_conv("2 -> 3 -> relu -> 2", seed=5)
    x, y = _moons(4, 0)
    cfg = TrainConfig(epochs=2, batch=4, lr=0.8)
    eps = 0.1
    points = [BudgetPoint(m=1), BudgetPoint(n=1, eps=eps), BudgetPoint(n=1, eps=eps, m=1, paired=True),
              BudgetPoint(m=2)]
    _, steps = _record(graph, x, y, cfg, points)
    corners = [np.array(c) * eps for c in itertools.product([-1, 1], repeat=2)]
    flips = [_none] + [_label_option(r, lab) for r in range(4) for lab in (0, 1)]
    feats = [_none] + [_feature_option(r, c) for r in range(4) for c in corners]
    paired = [_none] + [_feature_option(r, c, lab) for r in range(4) for c in corners for lab in (0, 1)]
    assert _enumerate(graph, x, y, cfg, flips, steps, 0) == 81
    assert _enumerate(graph, x, y, cfg, feats, steps, 1) == 289
    assert _enumerate(graph, x, y, cfg, paired[::3], steps, 2) > 100
    pairs = [_none] + [_flip_rows(r) for r in itertools.combinations(range(4), 2)]
    assert _enumerate(graph, x, y, cfg, pairs, steps, 3) == 49
    _, steps32 = _record(graph, x, y, cfg, points[:1], cover="all")
    assert _enumerate(graph, x, y, cfg, flips, steps32, 0, torch.float32) == 81


def _flip_rows(rows):
    def f(idx, xb, yb):
        yb[list(rows)] = 1 - yb[list(rows)]
        return xb, yb
    return f


@pytest.mark.parametrize("method", ["element", "norm"])
def test_brute_force_unbounded_replacement_with_clipping(method):
    graph = build_conv("2 -> 3 -> relu -> 2", seed=6)
    x, y = _moons(4, 1)
    cfg = TrainConfig(epochs=2, batch=4, lr=0.8, clip=0.3, clip_method=method)
    _, steps = _record(graph, x, y, cfg, [BudgetPoint(kind="unbounded", n=1), BudgetPoint(kind="bounded", m=1)])
    far = [np.array([6.0, -6.0]), np.array([-4.0, 5.0]), np.array([0.0, 0.0])]
    options = [_none] + [_replace_option(r, p, lab) for r in range(4) for p in far for lab in (0, 1)]
    assert _enumerate(graph, x, y, cfg, options[::2] + [options[-1]], steps, 0) > 100
    flips = [_none] + [_label_option(r, 1 - int(y[r])) for r in range(4)]
    _enumerate(graph, x, y, cfg, flips, steps, 1)


def test_brute_force_poisoning_of_a_net_with_two_conv_layers_stays_inside():
    """End to end through the streamed descent path: the second convolution's gradient sums over positions
    with interval factors on both sides (test_descent.py checks that path against the boxes' extremes)."""
    graph = build_conv("1x4x4 -> 2c2 -> relu -> 2c2 -> relu -> flatten -> 2", seed=3)
    gen = np.random.default_rng(0)
    x = gen.normal(size=(4, 1, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 1, 0])
    cfg = TrainConfig(epochs=2, batch=4, lr=0.5)
    eps = 0.1
    _, steps = _record(graph, x, y, cfg, [BudgetPoint(m=1), BudgetPoint(n=1, eps=eps)])
    flips = [_none] + [_label_option(r, 1 - int(y[r])) for r in range(4)]
    signs = [np.sign(gen.normal(size=(1, 4, 4))) * eps for _ in range(3)] + [np.full((1, 4, 4), eps)]
    feats = [_none] + [_feature_option(r, d) for r in range(4) for d in signs]
    assert _enumerate(graph, x, y, cfg, flips, steps, 0) == 25
    assert _enumerate(graph, x, y, cfg, feats, steps, 1) == 289


def test_brute_force_feature_poisoning_through_a_frozen_prefix_stays_inside():
    """Fine-tuning: the frozen first layer is evaluated once, the poisoned boxes through it per budget
    point (a sweep over eps); every corner attack stays inside its own point's bounds."""
    graph = build_conv("2 -> 4 -> relu -> 3 -> relu -> 2", seed=0)
    x, y = _moons(3, 2)
    cfg = TrainConfig(epochs=2, batch=3, lr=0.8, frozen=1)
    points = [BudgetPoint(n=1, eps=0.02), BudgetPoint(n=1, eps=0.3)]
    _, steps = _record(graph, x, y, cfg, points)
    for q, eps in enumerate((0.02, 0.3)):
        corners = [np.array(c) * eps for c in itertools.product([-1, 1], repeat=2)]
        feats = [_none] + [_feature_option(r, c) for r in range(3) for c in corners]
        assert _enumerate(graph, x, y, cfg, feats, steps, q) == 169
        _, alone = _record(graph, x, y, cfg, points[q:q + 1])  # the sweep equals the point run alone
        for (lo, hi), (lo1, hi1) in zip(steps, alone):
            for a, b in zip(lo + hi, lo1 + hi1):
                torch.testing.assert_close(a[q], b[0], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# attack campaigns on a real training run


def _target_direction(graph, seed: int) -> list[torch.Tensor]:
    """A random sign pattern on a few parameters: the quantity the adversary pushes."""
    gen = torch.Generator().manual_seed(seed)
    model = to_torch(graph)
    out = []
    for p in model.parameters():
        v = torch.zeros_like(p)
        mask = torch.rand(p.shape, generator=gen) < 0.2
        v[mask] = torch.where(torch.rand(int(mask.sum()), generator=gen) < 0.5, -1.0, 1.0)
        out.append(v)
    return out


def _gain(per_grads, direction):
    """Per-sample effect on direction . (theta - lr * g) (bigger = pushes further)."""
    return -sum((g.reshape(g.shape[0], -1) * d.reshape(1, -1)).sum(1) for g, d in zip(per_grads, direction))


def _greedy_flips(m: int, direction, untrusted=None):
    def poison(t, idx, xb, yb, model):
        params = list(model.parameters())
        flipped = 1 - yb
        gain = _gain(_per_sample_grads(model, params, xb, flipped), direction) - \
            _gain(_per_sample_grads(model, params, xb, yb), direction)
        if untrusted is not None:
            gain[~torch.as_tensor(untrusted[idx])] = -float("inf")
        rows = torch.topk(gain, min(m, int(torch.isfinite(gain).sum()))).indices
        rows = rows[gain[rows] > 0]
        yb[rows] = flipped[rows]
        return xb, yb
    return poison


def _random_flips(m: int, seed: int, untrusted=None):
    rng = np.random.default_rng(seed)

    def poison(t, idx, xb, yb, model):
        allowed = np.arange(len(idx)) if untrusted is None else np.flatnonzero(untrusted[idx])
        rows = rng.choice(allowed, size=min(m, len(allowed)), replace=False)
        yb[rows] = 1 - yb[rows]
        return xb, yb
    return poison


def _pgd_features(n: int, eps: float, direction, steps: int = 5):
    def poison(t, idx, xb, yb, model):
        params = list(model.parameters())
        base = _gain(_per_sample_grads(model, params, xb, yb), direction)
        rows = torch.topk(base.abs(), n).indices  # any rows will do; push the most sensitive
        delta = torch.zeros_like(xb[rows], requires_grad=True)
        for _ in range(steps):
            out = model(xb[rows] + delta)
            loss = F.cross_entropy(out, yb[rows], reduction="sum")
            grads = torch.autograd.grad(loss, params, create_graph=True)
            obj = -sum((g * d).sum() for g, d in zip(grads, direction))
            (step,) = torch.autograd.grad(obj, delta)
            with torch.no_grad():
                delta += 0.5 * eps * step.sign()
                delta.clamp_(-eps, eps)
        xb = xb.clone()
        xb[rows] = xb[rows] + delta.detach()
        return xb, yb
    return poison


def _replacements(n: int, seed: int):
    rng = np.random.default_rng(seed)

    def poison(t, idx, xb, yb, model):
        rows = rng.choice(len(idx), size=n, replace=False)
        xb[rows] = torch.as_tensor(rng.uniform(-8, 8, size=(n, xb.shape[1])), dtype=xb.dtype)
        yb[rows] = torch.as_tensor(rng.integers(0, 2, n))
        return xb, yb
    return poison


def _check_certificates(graph, res, x_test, y_test, q: int, finals):
    cert = certify(graph, res, x_test, y_test, Objective(kind="untargeted", metric="accuracy"))
    for params in finals:
        xt = torch.as_tensor(x_test, dtype=params[0].dtype)
        model = to_torch(graph, dtype=params[0].dtype)
        with torch.no_grad():
            for p, v in zip(model.parameters(), params):
                p.copy_(v)
            pred = model(xt).argmax(-1)
        sure = cert.certified[q]
        assert bool((pred[sure] == cert.prediction[sure]).all())
    return float(cert.certified[q].float().mean())


def test_attack_campaigns_stay_inside_bounds_and_certificates(radius_products):
    graph = build_conv("2 -> 16 -> relu -> 2", seed=1)
    x, y = _moons(120, 2)
    x_test, y_test = _moons(60, 3)
    cfg = TrainConfig(epochs=2, batch=60, lr=0.5, lr_decay=0.2, momentum=0.3, order_seed=4)
    points = [BudgetPoint(m=1), BudgetPoint(n=2, eps=0.05), BudgetPoint(n=1, eps=0.05, m=1)]
    res, steps = _record(graph, x, y, cfg, points, cover="all")
    campaigns = {0: [_random_flips(1, s) for s in range(2)] + [_greedy_flips(1, _target_direction(graph, s)) for s in range(3)],
                 1: [_pgd_features(2, 0.05, _target_direction(graph, s)) for s in range(3)],
                 2: [lambda t, idx, xb, yb, model, s=s: _random_flips(1, s)(t, idx, *_pgd_features(1, 0.05, _target_direction(graph, s))(t, idx, xb, yb, model), model)
                     for s in range(2)]}
    certified = []
    for q, attacks in campaigns.items():
        finals = []
        for k, attack in enumerate(attacks):
            trace = attacked_run(graph, x, y, cfg, attack, torch.float32)
            _assert_inside(trace, steps, q, f"point {q} attack {k}")
            finals.append(trace[-1])
        certified.append(_check_certificates(graph, res, x_test, y_test, q, finals))
    assert certified[0] > 0.1 and certified[1] > 0.5  # the check above is not vacuous


def test_attack_campaign_unbounded_clipped_and_trusted_rows():
    graph = build_conv("2 -> 16 -> relu -> 2", seed=2)
    x, y = _moons(80, 4)
    x_test, y_test = _moons(60, 5)
    cfg = TrainConfig(epochs=2, batch=40, lr=0.5, clip=0.2)
    trusted = np.zeros(80, bool)
    trusted[::2] = True
    res, steps = _record(graph, x, y, cfg, [BudgetPoint(kind="unbounded", n=2), BudgetPoint(m=3)], trusted=trusted)
    finals = []
    for s in range(3):
        trace = attacked_run(graph, x, y, cfg, _replacements(2, s))
        _assert_inside(trace, steps, 0, f"replacement attack {s}")
        finals.append(trace[-1])
    _check_certificates(graph, res, x_test, y_test, 0, finals)
    untrusted = ~trusted
    for s in range(2):
        for attack in (_random_flips(3, s, untrusted), _greedy_flips(3, _target_direction(graph, s), untrusted)):
            _assert_inside(attacked_run(graph, x, y, cfg, attack), steps, 1, "flips on untrusted rows")


def test_brute_force_with_crown_intermediate_bounds():
    graph = build_conv("2 -> 4 -> relu -> 4 -> relu -> 2", seed=7)
    x, y = _moons(4, 2)
    cfg = TrainConfig(epochs=2, batch=4, lr=0.8)
    eps = 0.1
    steps = []
    train_with_bounds(graph, x, y, cfg, [BudgetPoint(m=1), BudgetPoint(n=1, eps=eps)], method="crown+ibp",
                      on_step=lambda t, nom, lo, hi: steps.append(([a.clone() for a in lo], [a.clone() for a in hi])))
    flips = [_none] + [_label_option(r, 1 - int(y[r])) for r in range(4)]
    corners = [np.array(c) * eps for c in itertools.product([-1, 1], repeat=2)]
    feats = [_none] + [_feature_option(r, c) for r in range(4) for c in corners[::3]]
    assert _enumerate(graph, x, y, cfg, flips, steps, 0) == 25
    assert _enumerate(graph, x, y, cfg, feats, steps, 1) == 81
