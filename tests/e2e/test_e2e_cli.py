"""The CLI end to end: exit codes, JUnit, positioned errors, atomic reports, determinism."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import run_dirs, write_spec

from pcert.cli import main


def test_passing_gate_exits_0_and_writes_junit(passing_spec: Path, tmp_path: Path, capsys) -> None:
    junit = tmp_path / "junit.xml"
    assert main(["run", str(passing_spec), "--quiet", "--junit", str(junit)]) == 0
    cases = ET.parse(junit).getroot().iter("testcase")
    cases = list(cases)
    assert len(cases) == 1 and cases[0].find("failure") is None
    (run_dir,) = run_dirs(passing_spec)
    assert (run_dir / "report.json").is_file() and (run_dir / "report.html").is_file()
    assert "report:" in capsys.readouterr().out


def test_failing_gate_exits_1_and_names_the_gate(failing_spec: Path, tmp_path: Path, capsys) -> None:
    junit = tmp_path / "junit.xml"
    assert main(["run", str(failing_spec), "--quiet", "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "certified_accuracy" in out and "0.99" in out
    failures = [c for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None]
    assert len(failures) == 1 and "certified_accuracy" in failures[0].find("failure").get("message")


def test_bad_spec_exits_2_with_positioned_error(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path, "gate nominal_accuracy >= 0.5")
    spec.write_text(spec.read_text().replace("lr: 0.5", "lr: 0.5, lrr: 1"))
    assert main(["run", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:4:" in err and "error:" in err and "Traceback" not in err
    assert not run_dirs(spec)


def test_exit_code_through_a_real_process(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "gate nominal_accuracy >= 0.5")
    spec.write_text(spec.read_text().replace("bounds ibp", "bounds ibpp"))
    proc = subprocess.run([sys.executable, "-m", "pcert", "compile", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert ":9:8: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupted_run_leaves_no_report_and_keeps_earlier_ones(passing_spec: Path, monkeypatch) -> None:
    assert main(["run", str(passing_spec), "--quiet"]) == 0
    (earlier,) = run_dirs(passing_spec)
    before = (earlier / "report.json").read_bytes()
    import pcert.runtime.report.writer as writer

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "render_html", interrupt)
    assert main(["run", str(passing_spec), "--quiet"]) == 130
    assert run_dirs(passing_spec) == [earlier]
    assert (earlier / "report.json").read_bytes() == before
    leftovers = [p for p in (passing_spec.parent / "runs").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def _stable(report: dict) -> dict:
    drop = {"created", "timings", "run_dir"}
    return {k: v for k, v in report.items() if k not in drop}


def test_same_spec_and_seed_give_identical_reports(passing_spec: Path) -> None:
    assert main(["run", str(passing_spec), "--quiet"]) == 0
    assert main(["run", str(passing_spec), "--quiet"]) == 0
    first, second = run_dirs(passing_spec)
    a = json.loads((first / "report.json").read_text())
    b = json.loads((second / "report.json").read_text())
    assert _stable(a) == _stable(b)


def test_run_from_a_compiled_plan(passing_spec: Path, capsys) -> None:
    assert main(["compile", str(passing_spec), "-o", str(passing_spec.parent / "plans")]) == 0
    plan = passing_spec.parent / "plans" / "tiny.plan.json"
    assert plan.is_file()
    assert main(["run", str(plan), "--quiet"]) == 0


def test_stale_plan_is_refused(passing_spec: Path, capsys) -> None:
    assert main(["compile", str(passing_spec), "-o", str(passing_spec.parent)]) == 0
    plan = passing_spec.parent / "tiny.plan.json"
    main(["model", "mlp", "2,16,2", "-o", str(passing_spec.parent / "tiny.onnx"), "--seed", "7"])
    assert main(["run", str(plan), "--quiet"]) == 2
    assert "stale" in capsys.readouterr().err


def _repin(run_dir: Path, arrays: dict) -> None:
    """Rewrite the sidecar and re-pin its hashes honestly: only recomputation can notice."""
    from pcert.runtime.report.sidecar import array_sha256, write_npz
    from pcert.runtime.report.writer import file_sha256

    write_npz(run_dir / "bounds.npz", arrays)
    report = json.loads((run_dir / "report.json").read_text())
    for name, array in arrays.items():
        report["sidecar"]["arrays"][name] = {"shape": list(array.shape), "dtype": array.dtype.str,
                                             "sha256": array_sha256(array)}
    report["sidecar"]["sha256"] = file_sha256(run_dir / "bounds.npz")
    (run_dir / "report.json").write_text(json.dumps(report))


@pytest.mark.parametrize("tamper", ["bound", "flag", "aggregate", "swapped_sidecar"])
def test_check_passes_fresh_run_and_fails_each_tampering(tmp_path: Path, tamper: str, capsys) -> None:
    from pcert.runtime.report.sidecar import read_npz

    spec = write_spec(tmp_path, "gate nominal_accuracy >= 0.5")
    (tmp_path / "other").mkdir()
    other = write_spec(tmp_path / "other", "", noise=0.2)
    assert main(["run", str(spec), "--quiet"]) == 0 and main(["run", str(other), "--quiet"]) == 0
    (run_dir,) = run_dirs(spec)
    assert main(["check", str(run_dir)]) == 0
    arrays = read_npz(run_dir / "bounds.npz")
    if tamper == "aggregate":
        report = json.loads((run_dir / "report.json").read_text())
        entry = report["summary"]["certified_accuracy"][-1]
        entry["value"] = min(1.0, entry["value"] + 0.125)
        (run_dir / "report.json").write_text(json.dumps(report))
    elif tamper == "bound":
        arrays["output_upper"] = arrays["output_upper"] - 0.5   # claims tighter bounds than the parameters give
        _repin(run_dir, arrays)
    elif tamper == "flag":
        arrays["certified"] = ~arrays["certified"]
        _repin(run_dir, arrays)
    else:
        (other_dir,) = run_dirs(other)
        (run_dir / "bounds.npz").write_bytes((other_dir / "bounds.npz").read_bytes())
    assert main(["check", str(run_dir)]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("failure", [RuntimeError("solver crashed"), MemoryError()])
def test_internal_and_resource_failures_exit_3_without_traceback(passing_spec: Path, monkeypatch, capsys,
                                                                 failure: BaseException) -> None:
    import pcert.runtime.execute as execute

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(execute, "run_single", broken)
    assert main(["run", str(passing_spec), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("pcert:")
    assert not run_dirs(passing_spec)
