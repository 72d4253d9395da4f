"""End to end with the real AGT engine: its certificates, written as a report, pass the independent
check (every metric recomputed, none skipped), and an edited engine output does not."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.datasets import make_moons, make_regression

from pcert.compiler.model_builder import build_mlp
from pcert.compiler.onnx_export import graph_to_onnx
from pcert.runtime.report import BoundsRecord, RunRecord, check_run, summary_from_metrics, write_report
from report_fixtures import tamper_sidecar

agt = pytest.importorskip("pcert.runtime.agt")


@pytest.fixture(autouse=True)
def quick_html(monkeypatch):
    import pcert.runtime.report.writer as writer
    monkeypatch.setattr(writer, "render_html", lambda report, arrays: "<html></html>\n")


def _moons():
    x, y = make_moons(96, noise=0.1, random_state=0)
    return x.astype(np.float32), y


def _regression():
    x, y = make_regression(96, 3, noise=0.1, random_state=0)
    return x.astype(np.float32), (y / y.std()).astype(np.float32)[:, None]


CASES = {
    "targeted-ce": (_moons, [2, 8, 2], "cross_entropy", agt.Objective("targeted", classes=(0, 1)), "ibp"),
    "untargeted-ce-crown": (_moons, [2, 8, 2], "cross_entropy", agt.Objective("untargeted", metric="cross_entropy"),
                            "crown+ibp"),
    "backdoor": (_moons, [2, 8, 2], "cross_entropy", agt.Objective("backdoor", eps=0.05), "ibp"),
    "binary-untargeted": (_moons, [2, 8, 1], "binary_cross_entropy", agt.Objective("untargeted", metric="cross_entropy"),
                          "ibp"),
    "regression": (_regression, [3, 8, 1], "mse", agt.Objective("untargeted", metric="mse"), "ibp"),
}


def _engine_run(tmp_path, case):
    data, sizes, loss, objective, method = CASES[case]
    x, y = data()
    graph = build_mlp(sizes, seed=0)
    task = "regression" if loss == "mse" else "classification"
    points = [agt.BudgetPoint(n=0), agt.BudgetPoint(n=1, eps=0.05), agt.BudgetPoint(n=4, eps=0.05)]
    cfg = agt.TrainConfig(epochs=2, batch=32, lr=0.05 if task == "regression" else 0.5, loss=loss)
    result = agt.train_with_bounds(graph, x[:64], y[:64], cfg, points, method=method)
    certs = agt.certify(graph, result, x[64:], y[64:], objective, method=method, task=task)
    box = (x[64:] - objective.eps, x[64:] + objective.eps) if objective.kind == "backdoor" else (None, None)
    bounds = BoundsRecord.from_engine(result, certs, x[64:], y[64:], objective=dataclasses.asdict(objective),
                                      method=method, task=task, input_lower=box[0], input_upper=box[1])
    sweep = [{"n": p.n, "eps": p.eps} for p in points]
    record = RunRecord(spec_text=case, spec_path=f"{case}.pcert", plan={}, plan_hash="ab" * 32,
                       onnx_bytes=graph_to_onnx(graph), data_descriptor={"source": case}, data_sha256="",
                       points=sweep, summary=summary_from_metrics(sweep, certs.metrics), bounds=bounds,
                       arithmetic=dict(result.arithmetic))
    return write_report(record, tmp_path), certs


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_certificates_pass_the_independent_check(tmp_path, case):
    run, certs = _engine_run(tmp_path, case)
    result = check_run(run)
    assert result.ok, result.render()
    assert not any(s.startswith("aggregates without") for s in result.skipped), result.skipped
    assert "output bounds contain the " + CASES[case][4] + " recomputation" in result.checked


def test_edited_engine_flag_fails(tmp_path):
    run, certs = _engine_run(tmp_path, "targeted-ce")
    flags = certs.certified.numpy()
    p, i = map(int, np.argwhere(~flags)[0])

    def edit(arrays):
        arrays["certified"][p, i] = True
    tamper_sidecar(run, edit)
    result = check_run(run)
    assert not result.ok and any(f.startswith(f"certified[{p}][{i}]: stored True") for f in result.failures)
