"""Independent check: passes on a consistent run, fails (saying what) on every kind of tampering."""
from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import numpy_helper

from pcert.errors import UserError
import pcert.runtime.report.writer as writer
from pcert.runtime.report import check_run, write_report
from pcert.runtime.report.writer import file_sha256
from pcert.runtime.report.check_metrics import sure
from report_fixtures import failures, quick_html, forward_bounds, report_json, save_report_json, single_record, tamper_sidecar


@pytest.fixture(scope="module")
def record():
    return single_record()


@pytest.fixture
def run(tmp_path, record):
    return write_report(record, tmp_path)


def test_consistent_run_passes(run):
    result = check_run(run)
    assert result.ok, result.render()
    assert "certified flags" in result.checked and "output bounds contain the ibp recomputation" in result.checked
    assert any(c.startswith("aggregates: certified_accuracy, nominal_accuracy") for c in result.checked)


def test_fixture_bounds_contain_sampled_parameters(record):
    """The fixture's bounds are sound: outputs of parameters sampled inside the box stay inside."""
    import torch
    from pcert.compiler.model_builder import build_mlp
    graph = build_mlp([2, 8, 3], seed=0)
    b = record.bounds
    fwd = forward_bounds()
    rng = np.random.default_rng(1)
    x = torch.as_tensor(b.x_test)
    for p in range(len(record.points)):
        theta = [torch.as_tensor(lo[p] + rng.random((64, *lo[p].shape), dtype=np.float32) * (hi[p] - lo[p]))
                 for lo, hi in zip(b.lower, b.upper)]          # 64 parameter samples on the budget axis
        out = fwd(graph, theta, theta, x, x)[0].numpy()
        assert (out >= b.output_lower[p] - 1e-5).all() and (out <= b.output_upper[p] + 1e-5).all()


def test_tightened_bound_fails(run):
    def edit(arrays):
        arrays["output_lower"][2, 3, 1] += 0.5
    tamper_sidecar(run, edit)
    text = failures(run)
    assert "output_lower[2, 3, 1]" in text and "is above recomputed" in text


def test_edited_parameter_bound_fails(run):
    def edit(arrays):
        arrays["param_upper_000"][1] = arrays["param_lower_000"][1]      # nominal no longer inside
    tamper_sidecar(run, edit)
    assert "parameter 0: nominal value" in failures(run)


@pytest.mark.parametrize("to", [True, False])
def test_edited_certified_flag_fails(run, record, to):
    flags = record.bounds.certified
    p, i = map(int, np.argwhere(flags != to)[0])

    def edit(arrays):
        arrays["certified"][p, i] = to
    tamper_sidecar(run, edit)
    text = failures(run)
    assert f"certified[{p}][{i}]: stored {to} != recomputed {not to}" in text


def test_flags_and_aggregate_edited_together_still_fail(run, record):
    """Flipping a flag and its aggregate consistently is caught by the bounds."""
    flags = record.bounds.certified
    p, i = map(int, np.argwhere(~flags)[-1])

    def edit(arrays):
        arrays["certified"][p, i] = True
    tamper_sidecar(run, edit)
    report = report_json(run)
    report["summary"]["certified_accuracy"][p]["value"] = float((flags[p].sum() + 1) / flags.shape[1])
    save_report_json(run, report)
    assert f"certified[{p}][{i}]" in failures(run)


def test_edited_aggregate_fails(run):
    report = report_json(run)
    report["summary"]["certified_accuracy"][1]["value"] = 0.99
    save_report_json(run, report)
    text = failures(run)
    assert "summary.certified_accuracy at {'eps': 0.01, 'n': 1}: stored 0.99 != recomputed" in text


def test_edited_engine_metric_fails(run):
    report = report_json(run)
    report["bounds"]["objective_values"][0]["nominal_accuracy"] = 1.0
    save_report_json(run, report)
    assert "bounds.objective_values.nominal_accuracy" in failures(run)


def test_swapped_sidecar_fails(tmp_path, run):
    other = write_report(single_record(seed=1), tmp_path / "other")
    (run / "bounds.npz").write_bytes((other / "bounds.npz").read_bytes())
    text = failures(run)
    assert "sidecar: stored sha256" in text and "sidecar array output_lower: stored sha256" in text


def _modify_model(run):
    model = onnx.load(run / "model.onnx")
    init = model.graph.initializer[0]
    weights = numpy_helper.to_array(init).copy()
    weights[0, 0] += 0.25
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, run / "model.onnx")


def test_modified_model_fails_on_hash(run):
    _modify_model(run)
    assert "model.onnx: stored sha256" in failures(run)


def test_modified_architecture_with_rehashed_report_fails_on_recomputation(run):
    """model.onnx holds the initial weights (training changes them), so what the check can
    rebuild from it is the architecture: swap the activation and re-pin the hash."""
    model = onnx.load(run / "model.onnx")
    node = next(n for n in model.graph.node if n.op_type == "Relu")
    node.op_type = "Tanh"
    onnx.save(model, run / "model.onnx")
    report = report_json(run)
    report["model"]["sha256"] = file_sha256(run / "model.onnx")
    save_report_json(run, report)
    text = failures(run)
    assert "model.onnx: stored sha256" not in text and "nominal_output[" in text


def test_edited_spec_text_and_plan_hash_fail(run):
    report = report_json(run)
    report["spec"]["text"] += "gate certified_accuracy >= 0\n"
    report["plan"]["meaning"]["spec"]["seed"] = 7
    save_report_json(run, report)
    text = failures(run)
    assert "spec.text: stored sha256" in text and "plan_hash: stored" in text


def test_nan_bounds_never_certify(run, record):
    p, i = map(int, np.argwhere(record.bounds.certified)[-1])

    def edit(arrays):
        arrays["output_lower"][p, i, :] = np.nan
    tamper_sidecar(run, edit)
    assert f"output_lower[{p}, {i}, 0]" in failures(run)


def test_missing_files_and_bad_dirs(tmp_path, run):
    (run / "model.onnx").unlink()
    text = failures(run)
    assert "model.onnx: file model.onnx is missing" in text and "model.onnx: cannot rebuild the network" in text
    with pytest.raises(UserError, match="not a pcert run directory"):
        check_run(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{")
    with pytest.raises(UserError, match="cannot be read as JSON"):
        check_run(tmp_path / "broken")


def test_schema_violation_is_reported(run):
    report = report_json(run)
    del report["points"]
    save_report_json(run, report)
    assert "report.json schema" in failures(run)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_flag_rule_matches_brute_force_with_ties(data):
    """``sure`` against enumeration of every integer output vector in small integer boxes
    (integer boxes make exact ties frequent; argmax breaks ties toward the smaller index)."""
    C = data.draw(st.integers(2, 3))
    lo = np.array(data.draw(st.lists(st.integers(-2, 2), min_size=C, max_size=C)), dtype=np.float64)
    hi = lo + np.array(data.draw(st.lists(st.integers(0, 2), min_size=C, max_size=C)))
    target = data.draw(st.integers(0, C - 1))
    outcomes = {int(np.argmax(z)) for z in itertools.product(*[range(int(a), int(b) + 1) for a, b in zip(lo, hi)])}
    certain = sure(lo[None, None], hi[None, None], np.array([target]), tie_wins=True)[0, 0]
    strict = sure(lo[None, None], hi[None, None], np.array([target]), tie_wins=False)[0, 0]
    assert certain == (outcomes == {target})
    assert not strict or certain


def test_binary_single_logit_rule():
    lo = np.array([[[0.5], [-1.0], [-1.0], [0.0]]])
    hi = np.array([[[1.0], [-0.5], [0.5], [0.0]]])
    target = np.array([1, 0, 0, 0])
    assert sure(lo, hi, target, tie_wins=True).tolist() == [[True, True, False, True]]
    assert sure(lo, hi, target, tie_wins=False).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("kind", ["backdoor", "untargeted_accuracy", "untargeted_ce", "regression"])
def test_every_objective_checks_and_catches_an_edited_metric(tmp_path, kind):
    record = single_record(kind=kind, plane=False)
    run = write_report(record, tmp_path)
    result = check_run(run)
    assert result.ok, result.render()
    assert not any("aggregates without" in s for s in result.skipped)
    report = report_json(run)
    for metric in report["summary"]:
        broken = json.loads(json.dumps(report))
        entry = broken["summary"][metric][2]
        entry["value"] = entry["value"] * 0.5 - 0.01      # claim less loss / accuracy than recomputed
        save_report_json(run, broken)
        assert f"summary.{metric} at {entry['point']}" in failures(run), metric
    save_report_json(run, report)
    assert check_run(run).ok


def test_shrunken_backdoor_box_fails(tmp_path):
    run = write_report(single_record(kind="backdoor", plane=False), tmp_path)

    def edit(arrays):
        arrays["input_upper"][3, 1] -= 0.04
    tamper_sidecar(run, edit)
    assert "input box[3, 1]" in failures(run)


def test_nonfinite_point_must_not_certify(tmp_path, record):
    rec = copy.deepcopy(record)
    rec.bounds.first_nonfinite_step = [None, None, 4]
    rec.bounds.lower[0][2] = -np.inf
    run = write_report(rec, tmp_path)
    text = failures(run)
    assert "went non-finite at step 4" in text
    assert "output_lower[2, 0, 0]" in text and "is above recomputed -inf" in text   # finite bounds from -inf params


def test_edited_gate_verdict_fails(run):
    report = report_json(run)
    assert report["verdicts"] and report["verdicts"][0]["passed"]
    report["verdicts"][0]["passed"] = False
    save_report_json(run, report)
    assert "verdicts['certified_accuracy >= 0.5 at n = 1']: stored passed=False" in failures(run)


def test_report_must_match_what_the_plan_pins(tmp_path, record):
    from pcert.compiler.plan import plan_hash
    rec = copy.deepcopy(record)
    meaning = {**rec.plan["meaning"], "model": {"sha256": "1" * 64}, "data": {"sha256": rec.data_sha256}}
    rec.plan = {**rec.plan, "meaning": meaning, "hash": plan_hash(meaning),
                "provenance": {"spec_sha256": rec.spec_sha256}}
    rec.plan_hash = plan_hash(meaning)
    text = failures(write_report(rec, tmp_path))
    assert f"model sha256: report has {rec.onnx_sha256}, the plan pins {'1' * 64}" in text
    assert "data sha256" not in text and "spec sha256" not in text
