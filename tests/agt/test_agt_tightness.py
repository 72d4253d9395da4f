"""Tightness on the AGT paper's halfmoons setting (targets from the project brief), one sweep run."""
from __future__ import annotations

from sklearn.datasets import make_moons

from pcert.compiler.model_builder import build_mlp
from pcert.runtime.agt import BudgetPoint, Objective, TrainConfig, certify, train_with_bounds

# (budget point, minimum certified test points out of 1000)
TARGETS = [(BudgetPoint(n=10, eps=0.01), 880), (BudgetPoint(n=50, eps=0.01), 860),
           (BudgetPoint(m=1), 860), (BudgetPoint(m=5), 780), (BudgetPoint(m=10), 640)]


def test_halfmoons_certified_accuracy_targets():
    x, y = make_moons(3000, noise=0.1, random_state=0)
    xt, yt = make_moons(1000, noise=0.1, random_state=1)
    mu, sd = x.mean(0), x.std(0)
    graph = build_mlp([2, 128, 2], seed=0)
    cfg = TrainConfig(epochs=5, batch=3000, lr=1.0, lr_decay=0.6, loss="cross_entropy")
    points = [BudgetPoint()] + [p for p, _ in TARGETS]
    res = train_with_bounds(graph, (x - mu) / sd, y, cfg, points)
    cert = certify(graph, res, (xt - mu) / sd, yt, Objective())
    counts = cert.certified.sum(1).tolist()
    assert 0.87 <= cert.metrics[0]["nominal_accuracy"] <= 0.91
    assert counts[0] == int(round(cert.metrics[0]["nominal_accuracy"] * 1000))  # zero budget certifies all correct
    for (point, need), got in zip(TARGETS, counts[1:]):
        assert got >= need, (point, got)
    assert all(s is None for s in res.first_nonfinite_step)
