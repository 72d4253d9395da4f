"""Gates, JUnit XML and the terminal summary."""
from __future__ import annotations

import math
import operator
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings, strategies as st

from pcert.errors import UserError
from pcert.runtime.report import evaluate_gates, format_summary, write_junit
from pcert.spec.model import Gate

SUMMARY = {
    "certified_accuracy": [{"point": {"n": 0, "eps": 0.01}, "value": 0.95},
                           {"point": {"n": 5, "eps": 0.01}, "value": 0.85},
                           {"point": {"n": 10, "eps": 0.01}, "value": 0.6}],
    "nominal_accuracy": [{"point": {"n": n, "eps": 0.01}, "value": 0.96} for n in (0, 5, 10)],
    "worst_case_mse": [{"point": {"n": 0, "eps": 0.01}, "value": 0.1}, {"point": {"n": 5, "eps": 0.01}, "value": "inf"},
                       {"point": {"n": 10, "eps": 0.01}, "value": "nan"}],
}


def test_pass_and_fail_with_messages():
    ok, bad = evaluate_gates(SUMMARY, [
        {"metric": "certified_accuracy", "op": ">=", "value": 0.85, "at": {"n": 5}},
        {"metric": "certified_accuracy", "op": ">=", "value": 0.85, "at": {"n": 10}}])
    assert ok.passed and ok.measured == 0.85 and ok.point == {"n": 5, "eps": 0.01}
    assert not bad.passed and bad.measured == 0.6
    for text in ("certified_accuracy >= 0.85 at n = 10", "0.6", "FAILED"):
        assert text in bad.message


def test_without_at_every_point_must_hold_and_the_worst_is_reported():
    verdict, = evaluate_gates(SUMMARY, [{"metric": "certified_accuracy", "op": ">", "value": 0.7}])
    assert not verdict.passed and verdict.measured == 0.6 and "worst of 3 points" in verdict.message
    verdict, = evaluate_gates(SUMMARY, [{"metric": "nominal_accuracy", "op": "==", "value": 0.96, "at": None}])
    assert verdict.passed
    verdict, = evaluate_gates(SUMMARY, [{"metric": "certified_accuracy", "op": "<=", "value": 0.9, "at": {"eps": 0.01}}])
    assert not verdict.passed and verdict.measured == 0.95


def test_non_finite_values_never_pass_silently():
    inf, = evaluate_gates(SUMMARY, [{"metric": "worst_case_mse", "op": "<=", "value": 1.0, "at": {"n": 5}}])
    assert not inf.passed and inf.measured == math.inf
    nan, = evaluate_gates(SUMMARY, [{"metric": "worst_case_mse", "op": ">=", "value": 0.0, "at": {"n": 10}}])
    assert not nan.passed and "nan" in nan.message
    nan_in_sweep, = evaluate_gates(SUMMARY, [{"metric": "worst_case_mse", "op": "<=", "value": 1e9}])
    assert not nan_in_sweep.passed


def test_spec_gate_objects_are_accepted():
    verdict, = evaluate_gates(SUMMARY, [Gate(metric="certified_accuracy", op=">=", value=0.9, at={"n": 0})])
    assert verdict.passed and verdict.at == {"n": 0.0}


@pytest.mark.parametrize("gate, text", [
    ({"metric": "certifed_accuracy", "op": ">=", "value": 0.5}, "metric 'certifed_accuracy' is not in the report"),
    ({"metric": "certified_accuracy", "op": ">=", "value": 0.5, "at": {"n": 3}}, "no sweep point"),
    ({"metric": "certified_accuracy", "op": ">=", "value": 0.5, "at": {"K": 1}}, "no sweep point"),
    ({"metric": "certified_accuracy", "op": "=>", "value": 0.5}, "unknown comparison"),
])
def test_missing_metric_or_point_is_a_user_error(gate, text):
    with pytest.raises(UserError, match=text) as info:
        evaluate_gates(SUMMARY, [gate])
    assert info.value.exit_code == 2


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(-10, 10) | st.just(math.nan) | st.just(math.inf), min_size=1, max_size=5),
       op=st.sampled_from([">=", ">", "<=", "<"]), threshold=st.floats(-10, 10))
def test_gate_holds_iff_every_selected_value_satisfies_it(values, op, threshold):
    summary = {"m": [{"point": {"n": i}, "value": v} for i, v in enumerate(values)]}
    compare = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}[op]
    verdict, = evaluate_gates(summary, [{"metric": "m", "op": op, "value": threshold}])
    assert verdict.passed == all(compare(v, threshold) for v in values)
    for i, v in enumerate(values):
        single, = evaluate_gates(summary, [{"metric": "m", "op": op, "value": threshold, "at": {"n": i}}])
        assert single.passed == compare(v, threshold)


def test_junit_one_testcase_per_gate(tmp_path):
    verdicts = evaluate_gates(SUMMARY, [
        {"metric": "certified_accuracy", "op": ">=", "value": 0.85, "at": {"n": 5}},
        {"metric": "certified_accuracy", "op": ">=", "value": 0.85, "at": {"n": 10}},
        {"metric": "worst_case_mse", "op": "<=", "value": 1.0, "at": {"n": 0}}])
    path = write_junit(verdicts, tmp_path / "out" / "gates.xml")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and root.get("failures") == "1"
    assert [c.get("name") for c in cases] == [v.name for v in verdicts]
    failures = [(c.get("name"), c.find("failure")) for c in cases if c.find("failure") is not None]
    assert len(failures) == 1 and failures[0][0] == "certified_accuracy >= 0.85 at n = 10"
    assert "measured certified_accuracy = 0.6" in failures[0][1].get("message")


def test_terminal_summary_lists_every_metric_point_and_gate():
    report = {"created": "now", "kind": "single", "plan_hash": "ab" * 32, "summary": SUMMARY,
              "spec": {"path": "x.pcert", "sha256": "cd" * 32}, "model": {"sha256": "ef" * 32},
              "environment": {"device": "cpu", "dtype": "float32", "seed": 0},
              "gates": [{"metric": "certified_accuracy", "op": ">=", "value": 0.85, "at": {"n": 10}},
                        {"metric": "nominal_accuracy", "op": ">=", "value": 0.9, "at": None},
                        {"metric": "missing_metric", "op": ">=", "value": 0.9, "at": None}]}
    text = format_summary(report)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("budget"))
    assert header.split()[1:] == sorted(SUMMARY)                      # one column per metric
    column = sorted(SUMMARY).index
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("n=")}
    assert list(rows) == ["n=0", "n=5", "n=10"]                         # eps is the same everywhere: not shown
    assert [rows[n][column("certified_accuracy")] for n in rows] == ["0.95", "0.85", "0.6"]
    assert [rows[n][column("worst_case_mse")] for n in rows] == ["0.1", "inf", "nan"]
    assert any(line.startswith("FAIL") and "at n = 10" in line for line in lines)
    assert any(line.startswith("PASS") and "nominal_accuracy" in line for line in lines)
    assert any(line.startswith("ERROR") and "missing_metric" in line for line in lines)


def test_gate_at_one_budget_takes_the_least_of_the_other_swept_budgets():
    grid = [{"n": n, "m": m, "eps": 0.01} for n in (0, 10) for m in (0, 5)]
    values = {(0, 0): 0.9, (0, 5): 0.7, (10, 0): 0.85, (10, 5): 0.4}
    summary = {"certified_accuracy": [{"point": p, "value": values[(p["n"], p["m"])]} for p in grid]}
    (at_n,) = evaluate_gates(summary, [{"metric": "certified_accuracy", "op": ">=", "value": 0.8, "at": {"n": 10}}])
    assert at_n.passed and at_n.measured == 0.85 and at_n.point == {"n": 10, "m": 0, "eps": 0.01}
    (both,) = evaluate_gates(summary, [{"metric": "certified_accuracy", "op": ">=", "value": 0.5,
                                        "at": {"n": 10, "m": 5}}])
    assert not both.passed and both.measured == 0.4
    (everywhere,) = evaluate_gates(summary, [{"metric": "certified_accuracy", "op": ">=", "value": 0.5, "at": None}])
    assert not everywhere.passed and everywhere.measured == 0.4 and "worst of 4 points" in everywhere.message
