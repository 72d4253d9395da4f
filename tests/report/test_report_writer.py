"""Writer: layout, schema, hashes, determinism, unique names, atomicity, non-finite encoding."""
from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pcert.runtime.report.writer as writer
from pcert.runtime.report import decode_number, validate_report, write_report
from pcert.runtime.report.encoding import dumps
from pcert.runtime.report.schema import schema_errors
from pcert.runtime.report.sidecar import read_npz
from report_fixtures import report_json, single_record


@pytest.fixture(scope="module")
def record():
    return single_record()


@pytest.fixture(autouse=True)
def quick_html(monkeypatch):
    """The writer tests do not look at figures (test_report_html does): skip matplotlib."""
    monkeypatch.setattr(writer, "render_html", lambda report, arrays: "<html></html>\n")


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_schema_and_hashes(tmp_path, record):
    run = write_report(record, tmp_path)
    assert re.fullmatch(r"\d{8}T\d{6}Z-" + record.plan_hash[:12], run.name)
    assert sorted(p.name for p in run.iterdir()) == ["bounds.npz", "model.onnx", "report.html", "report.json"]
    report = report_json(run)
    validate_report(report)
    assert report["schema_version"] == 1 and report["kind"] == "single"
    assert (run / "model.onnx").read_bytes() == record.onnx_bytes
    assert report["model"]["sha256"] == hashlib.sha256(record.onnx_bytes).hexdigest()
    assert report["sidecar"]["sha256"] == hashlib.sha256((run / "bounds.npz").read_bytes()).hexdigest()
    assert report["spec"]["sha256"] == hashlib.sha256(record.spec_text.encode()).hexdigest()
    arrays = read_npz(run / "bounds.npz")
    np.testing.assert_array_equal(arrays["param_lower_002"], record.bounds.lower[2])
    np.testing.assert_array_equal(arrays["certified"], record.bounds.certified)
    np.testing.assert_array_equal(arrays["plane_certified"], record.bounds.plane.certified)
    assert set(report["sidecar"]["arrays"]) == set(arrays)
    assert not list(tmp_path.glob(".tmp-*"))


def test_deterministic_apart_from_created_and_timings(tmp_path, record):
    first, second = write_report(record, tmp_path / "a"), write_report(record, tmp_path / "b")
    a, b = report_json(first), report_json(second)
    for report in (a, b):
        report.pop("created"), report.pop("timings")
    assert a == b
    assert (first / "bounds.npz").read_bytes() == (second / "bounds.npz").read_bytes()
    text = (first / "report.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"


def test_names_never_reused(tmp_path, record, monkeypatch):
    runs = [write_report(record, tmp_path) for _ in range(3)]
    assert len({r.name for r in runs}) == 3 and all((r / "report.json").is_file() for r in runs)

    fixed = writer.datetime(2030, 1, 2, 3, 4, 5, tzinfo=writer.timezone.utc)
    monkeypatch.setattr(writer, "datetime", type("Frozen", (), {"now": staticmethod(lambda tz=None: fixed)}))
    taken = tmp_path / f"20300102T030405Z-{record.plan_hash[:12]}"
    taken.mkdir()                                  # an empty folder: os.rename would silently replace it
    run = write_report(record, tmp_path)
    assert run.name == taken.name + "-1" and taken.is_dir() and not any(taken.iterdir())
    assert write_report(record, tmp_path).name == taken.name + "-2"


def test_rename_race_takes_next_name(tmp_path, record, monkeypatch):
    real_rename = writer.os.rename
    calls = []

    def racing_rename(src, dst):
        calls.append(dst)
        if len(calls) == 1:                       # someone else publishes this name first
            (tmp_path / dst.name).mkdir()
            (tmp_path / dst.name / "x").write_text("other run")
            raise OSError(39, "Directory not empty")
        return real_rename(src, dst)

    monkeypatch.setattr(writer.os, "rename", racing_rename)
    run = write_report(record, tmp_path)
    assert run.name.endswith("-1") and (tmp_path / calls[0].name / "x").read_text() == "other run"


@pytest.mark.parametrize("error", [RuntimeError("html failed"), KeyboardInterrupt()])
def test_failure_leaves_nothing_and_keeps_earlier_runs(tmp_path, record, monkeypatch, error):
    earlier = write_report(record, tmp_path)
    before = _tree(tmp_path)

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(writer, "render_html", boom)
    with pytest.raises(type(error)):
        write_report(record, tmp_path)
    assert _tree(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == [earlier.name]


def test_interrupt_during_sidecar_leaves_nothing(tmp_path, record, monkeypatch):
    def interrupted(path, arrays):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(record, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_record_is_rejected_before_anything_is_published(tmp_path, record):
    import copy
    bad = copy.deepcopy(record)
    bad.bounds.certified = bad.bounds.certified[:, :-1]
    with pytest.raises(ValueError, match="certified"):
        write_report(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_values_are_encoded_as_strings(tmp_path, record):
    import copy
    rec = copy.deepcopy(record)
    rec.summary["worst_case_mse"] = [{"point": p, "value": v} for p, v in zip(rec.points, [1.5, math.inf, math.nan])]
    rec.bounds.steps[-1]["width"][2][0]["max"] = math.inf
    rec.bounds.output_upper[2, 0, 0] = np.inf
    run = write_report(rec, tmp_path)
    text = (run / "report.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert [decode_number(e["value"]) for e in report["summary"]["worst_case_mse"]][:2] == [1.5, math.inf]
    assert math.isnan(decode_number(report["summary"]["worst_case_mse"][2]["value"]))
    assert report["bounds"]["steps"][-1]["width"][2][0]["max"] == "inf"
    assert read_npz(run / "bounds.npz")["output_upper"][2, 0, 0] == np.inf


def test_schema_rejects_broken_reports(tmp_path, record):
    report = report_json(write_report(record, tmp_path))
    assert schema_errors(report) == []
    for mutate in (lambda r: r.pop("sidecar"), lambda r: r.update(schema_version=2),
                   lambda r: r["summary"]["certified_accuracy"][0].update(value="Infinity"),
                   lambda r: r["model"].update(sha256="abc"), lambda r: r.update(extra=1)):
        broken = json.loads(json.dumps(report))
        mutate(broken)
        assert schema_errors(broken), mutate


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans() | st.none()
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=20))
def test_encoding_is_strict_json_and_round_trips_numbers(value):
    text = dumps(value)
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert dumps(parsed) == text

    def same(original, stored):
        if isinstance(original, float):
            assert decode_number(stored) == original or (math.isnan(original) and math.isnan(decode_number(stored)))
        elif isinstance(original, dict):
            assert all(same(v, stored[k]) is None for k, v in original.items())
        elif isinstance(original, list):
            assert all(same(a, b) is None for a, b in zip(original, stored))
        else:
            assert original == stored
    same(value, parsed)
