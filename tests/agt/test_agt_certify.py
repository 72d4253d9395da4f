"""Certificates: every model (and backdoor input) inside the boxes must respect every certificate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcert.compiler.model_builder import build_conv
from pcert.compiler.torch_model import to_torch
from pcert.runtime.agt import BudgetPoint, Objective, TrainConfig, certify, train_with_bounds


def _data(n, seed, d=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


def _sampled_models(graph, res, q, count, seed):
    gen = torch.Generator().manual_seed(seed)
    for k in range(count):
        model = to_torch(graph)
        with torch.no_grad():
            for p, lo, hi in zip(model.parameters(), res.lower, res.upper):
                t = torch.rand(p.shape, generator=gen)
                if k < 2:  # corners first: the extreme models
                    t = t.round()
                p.copy_(torch.minimum(torch.maximum(lo[q] + (hi[q] - lo[q]) * t, lo[q]), hi[q]))
        yield model


@pytest.mark.parametrize("method", ["ibp", "crown+ibp"])
def test_classification_certificates_hold_for_sampled_models_and_backdoor_inputs(method):
    graph = build_conv("3 -> 16 -> relu -> 2", seed=0)
    x, y = _data(200, 0)
    xt, yt = _data(80, 1)
    res = train_with_bounds(graph, x, y, TrainConfig(epochs=2, batch=100, lr=0.5),
                            [BudgetPoint(), BudgetPoint(m=1), BudgetPoint(n=2, eps=0.05)])
    targeted = certify(graph, res, xt, yt, Objective(classes=(0, 1)), method=method)
    backdoor = certify(graph, res, xt, yt, Objective(kind="backdoor", eps=0.1), method=method)
    untargeted = certify(graph, res, xt, yt, Objective(kind="untargeted", metric="cross_entropy"), method=method)
    assert targeted.lower.shape == (3, 80, 2) and targeted.certified.shape == (3, 80)
    m0 = targeted.metrics[0]
    assert m0["certified_accuracy"] == pytest.approx(m0["nominal_accuracy"])  # zero budget: everything
    assert {"certified_accuracy_class_0", "certified_accuracy_class_1"} <= set(m0)
    assert targeted.metrics[1]["certified_accuracy"] <= m0["certified_accuracy"]
    for q in range(3):
        assert backdoor.metrics[q]["backdoor_certified_accuracy"] <= targeted.metrics[q]["certified_accuracy"] + 1e-9
        assert bool((targeted.certified[q] <= (targeted.prediction == torch.as_tensor(yt))).all())
    xs = torch.as_tensor(xt)
    gen = torch.Generator().manual_seed(3)
    for q in range(3):
        for model in _sampled_models(graph, res, q, 6, q):
            with torch.no_grad():
                out = model(xs)
                trig = model(xs + (torch.rand(xs.shape, generator=gen) * 2 - 1) * 0.1)
            assert bool(((targeted.lower[q] <= out) & (out <= targeted.upper[q])).all())
            assert bool((out.argmax(-1)[targeted.certified[q]] == targeted.prediction[targeted.certified[q]]).all())
            assert bool((trig.argmax(-1)[backdoor.certified[q]] == torch.as_tensor(yt)[backdoor.certified[q]]).all())
            ce = F.cross_entropy(out, torch.as_tensor(yt))
            assert float(ce) <= untargeted.metrics[q]["worst_case_cross_entropy"] + 1e-6


def test_regression_prediction_intervals_and_mse_bounds():
    graph = build_conv("3 -> 8 -> tanh -> 1", seed=1)
    x, _ = _data(120, 2)
    y = (x[:, :1] * 0.7 - x[:, 1:2] * 0.2).astype(np.float32)
    res = train_with_bounds(graph, x, y, TrainConfig(epochs=3, batch=60, lr=0.2, loss="mse"),
                            [BudgetPoint(), BudgetPoint(m=2, label_norm="inf", nu=0.5), BudgetPoint(n=3, eps=0.1)])
    xt, _ = _data(40, 3)
    yt = (xt[:, :1] * 0.7).astype(np.float32)
    cert = certify(graph, res, xt, yt, Objective(kind="untargeted", metric="mse"), task="regression")
    assert cert.lower.shape == (3, 40, 1) and bool(cert.certified.all())
    for q in range(3):
        m = cert.metrics[q]
        assert m["best_case_mse"] <= m["nominal_mse"] <= m["worst_case_mse"] + 1e-7
        for model in _sampled_models(graph, res, q, 5, 10 + q):
            with torch.no_grad():
                out = model(torch.as_tensor(xt))
            assert bool(((cert.lower[q] <= out) & (out <= cert.upper[q])).all())
            mse = float(((out - torch.as_tensor(yt)) ** 2).mean())
            assert m["best_case_mse"] - 1e-6 <= mse <= m["worst_case_mse"] + 1e-6


def test_binary_sigmoid_output_certificates():
    graph = build_conv("3 -> 8 -> relu -> 1 -> sigmoid", seed=2)
    x, y = _data(150, 4)
    res = train_with_bounds(graph, x, y.astype(np.float32), TrainConfig(epochs=2, batch=75, lr=1.0, loss="binary_cross_entropy"),
                            [BudgetPoint(), BudgetPoint(m=1, label_classes=(1,))])
    xt, yt = _data(60, 5)
    cert = certify(graph, res, xt, yt, Objective(kind="untargeted", metric="accuracy"))
    assert cert.metrics[0]["nominal_accuracy"] > 0.7
    for q in range(2):
        for model in _sampled_models(graph, res, q, 5, 20 + q):
            with torch.no_grad():
                pred = (model(torch.as_tensor(xt))[:, 0] > 0.5).long()
            assert bool((pred[cert.certified[q]] == cert.prediction[cert.certified[q]]).all())


def test_per_class_certified_accuracy_counts_only_correct_predictions_for_every_objective():
    """A stable but wrong prediction is not certified accuracy, per class as overall (untargeted too)."""
    graph = build_conv("2 -> 8 -> relu -> 2", seed=0)
    x, _ = _data(40, 0, d=2)
    res = train_with_bounds(graph, x, (x[:, 0] > 0).astype(np.int64), TrainConfig(epochs=1, batch=40, lr=1e-3),
                            [BudgetPoint()])
    xt, _ = _data(30, 1, d=2)
    yt = 1 - (xt[:, 0] > 0).astype(np.int64)  # mislabelled: the nominal model is mostly wrong
    for kind in ("targeted", "untargeted"):
        c = certify(graph, res, xt, yt, Objective(kind=kind, metric="accuracy", classes=(0, 1)))
        for cls in (0, 1):
            sel = torch.as_tensor(yt) == cls
            accuracy = float((c.prediction[sel] == cls).double().mean())  # the nominal model is admissible
            assert c.metrics[0][f"certified_accuracy_class_{cls}"] <= accuracy + 1e-12


@pytest.mark.parametrize("logit", [8.0, 15.0, 16.5, 30.0, -20.0])
def test_worst_case_binary_cross_entropy_of_one_logit_covers_the_loss_where_sigmoid_rounds_to_one(logit):
    """-log(1 - sigmoid(z)) from a float32 sigmoid near 1 loses the loss; softplus in float64 keeps it."""
    graph = build_conv("1 -> 1", seed=0)
    graph.layers[0].weight[...] = 1.0
    graph.layers[0].bias[...] = 0.0
    x, y = np.array([[0.0]], np.float32), np.array([0])
    res = train_with_bounds(graph, x, y, TrainConfig(epochs=1, batch=1, lr=1e-6, loss="binary_cross_entropy"),
                            [BudgetPoint()])
    xt = np.array([[logit]], np.float32)
    for label in (0, 1):
        c = certify(graph, res, xt, np.array([label]), Objective(kind="untargeted", metric="cross_entropy"))
        worst = c.metrics[0]["worst_case_cross_entropy"]
        for z in (float(c.lower[0, 0, 0]), float(c.upper[0, 0, 0])):
            exact = F.softplus(torch.tensor(-z if label else z, dtype=torch.float64), threshold=1000.0)
            assert worst >= float(exact)
