"""Independent check of ensemble runs: votes, per-sample certificates, MILP records, MPS re-solve."""
from __future__ import annotations

import numpy as np
import pytest

import pcert.runtime.report.writer as writer
from pcert.runtime.report import check_run, write_report
from pcert.runtime.report.writer import file_sha256
from report_fixtures import failures, quick_html, ensemble_record, report_json, save_report_json, tamper_sidecar


@pytest.fixture(scope="module")
def record():
    return ensemble_record()


@pytest.fixture
def run(tmp_path, record):
    return write_report(record, tmp_path)


def _solved(report):
    return next(i for i, m in enumerate(report["ensemble"]["milp"]) if m["mps"] and m["incumbent"] > m["wrong"])


def test_consistent_ensemble_run_passes(run, record):
    result = check_run(run)
    assert result.ok, result.render()
    assert "MILP records (allocations re-evaluated, dual bounds, MPS re-solved)" in result.checked
    assert record.mps_files and all((run / "mps" / name).is_file() for name in record.mps_files)


def test_edited_vote_fails(run, record):
    i = int(np.flatnonzero(record.ensemble.certificates >= 1)[0])

    def edit(arrays):
        pred = arrays["ensemble_prediction"][i]
        arrays["ensemble_votes"][i] = (pred + 1) % 3          # every member now votes another class
    tamper_sidecar(run, edit)
    assert f"ensemble_prediction[{i}]: stored" in failures(run)


def test_edited_per_sample_certificate_fails(run, record):
    i = int(np.flatnonzero(record.ensemble.certificates >= 0)[0])

    def edit(arrays):
        arrays["ensemble_certificates"][i] += 3
    tamper_sidecar(run, edit)
    text = failures(run)
    assert f"ensemble_certificates[{i}]: stored" in text


def test_edited_multi_sample_aggregate_fails(run):
    report = report_json(run)
    report["summary"]["multi_sample_certified_accuracy"][1]["value"] = 1.0
    save_report_json(run, report)
    assert "summary.multi_sample_certified_accuracy at {'K': 1}: stored 1 != recomputed" in failures(run)


def test_over_claimed_batch_fails_even_when_consistent(run):
    """Lower a dual bound and raise the certified count and aggregate to match: the stored
    incumbent and the MPS re-solve both expose it."""
    report = report_json(run)
    n = _solved(report)
    entry = report["ensemble"]["milp"][n]
    entry["dual_bound"] -= 1
    entry["certified_count"] += 1
    K = entry["K"]
    total = sum(m["certified_count"] for m in report["ensemble"]["milp"] if m["K"] == K)
    for e in report["summary"]["multi_sample_certified_accuracy"]:
        if e["point"]["K"] == K:
            e["value"] = total / 12
    save_report_json(run, report)
    text = failures(run)
    assert f"ensemble.milp[{n}] (K={K}).dual_bound: stored" in text and "exceeds the stored dual bound" in text


def test_edited_allocation_fails(run):
    report = report_json(run)
    n = _solved(report)
    report["ensemble"]["milp"][n]["allocation"] = [0] * len(report["ensemble"]["milp"][n]["allocation"])
    save_report_json(run, report)
    assert f"ensemble.milp[{n}] (K={report['ensemble']['milp'][n]['K']}).incumbent: stored" in failures(run)


def test_edited_mps_file_fails(run):
    report = report_json(run)
    name = report["ensemble"]["milp"][_solved(report)]["mps"]
    path = run / "mps" / name
    path.write_text(path.read_text().replace(" MAX", " MIN", 1))
    assert f"mps file {name}: stored sha256" in failures(run)
    report["mps_files"][name]["sha256"] = file_sha256(path)
    save_report_json(run, report)
    assert ".mps: re-solved optimum" in failures(run)


def test_missing_batch_fails(run):
    report = report_json(run)
    report["ensemble"]["milp"] = [m for m in report["ensemble"]["milp"] if not (m["K"] == 2 and 0 in m["indices"])]
    save_report_json(run, report)
    assert "ensemble.milp (K=2): batches cover" in failures(run)


def test_time_limited_resolve_is_reported_not_failed(run):
    result = check_run(run, mps_time_limit=1e-9)
    assert result.ok, result.render()
    assert any("re-solve did not prove optimality" in s for s in result.skipped)


@pytest.mark.parametrize("scheme, vote", [("dpa", "roe"), ("fa", "plurality"), ("fa", "roe")])
def test_scored_ensembles_check_and_catch_an_edited_score(tmp_path, scheme, vote):
    from report_fixtures import failures, quick_html, scored_ensemble_record
    run = write_report(scored_ensemble_record(scheme, vote), tmp_path)
    result = check_run(run)
    assert result.ok, result.render()

    def edit(arrays):                      # every member's preferences reversed
        scores = arrays["ensemble_scores"]
        scores[:, :, :] = scores[:, :, ::-1]
    tamper_sidecar(run, edit)
    assert "(arg-max of ensemble_scores)" in failures(run)
