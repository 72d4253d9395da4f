"""Gates: thresholds on report metrics that decide a run's exit code, and their JUnit XML.

A gate names a metric, a comparison and a threshold, optionally ``at`` a budget (e.g.
``{"n": 10}``). With ``at`` it selects the sweep point where the named budgets take the given
values and every other swept budget takes its smallest value (in a sweep over n and m,
``at n = 10`` means n = 10 with the least label poisoning swept, usually m = 0). Without
``at`` it holds only if it holds at every sweep point; the verdict reports the worst value. A gate whose metric or point is not in
the summary is a ``UserError`` (exit 2), never a pass. NaN never passes.
"""
from __future__ import annotations

import math
import operator
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pcert.errors import UserError

from .encoding import decode_number

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}


@dataclass(frozen=True)
class GateVerdict:
    metric: str
    op: str
    threshold: float
    at: dict[str, float] | None
    measured: float               # the worst value over the selected points
    point: dict[str, Any]         # where the worst value was measured
    passed: bool
    message: str

    @property
    def name(self) -> str:
        return gate_name(self.metric, self.op, self.threshold, self.at)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for report.json (``RunRecord.verdicts``)."""
        return {"gate": self.name, "metric": self.metric, "op": self.op, "threshold": self.threshold,
                "at": self.at, "measured": self.measured, "point": self.point, "passed": self.passed,
                "message": self.message}


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def gate_name(metric: str, op: str, threshold: float, at: Mapping[str, Any] | None) -> str:
    where = f" at {', '.join(f'{k} = {_fmt(float(v))}' for k, v in at.items())}" if at else ""
    return f"{metric} {op} {_fmt(threshold)}{where}"


def _field(gate: Any, name: str) -> Any:
    return gate.get(name) if isinstance(gate, Mapping) else getattr(gate, name, None)


def _matches(point: Mapping[str, Any], at: Mapping[str, Any]) -> bool:
    return all(k in point and math.isclose(decode_number(point[k]), float(v), rel_tol=1e-9, abs_tol=1e-12)
               for k, v in at.items())


def _select(entries: Sequence[Mapping[str, Any]], at: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The entries a gate speaks about (see the module docstring)."""
    if at is None:
        return list(entries)
    matching = [e for e in entries if _matches(e["point"], at)]
    others = {k for e in matching for k in e["point"] if k not in at}
    least = {k: min(decode_number(e["point"][k]) for e in matching) for k in others}
    return [e for e in matching if all(decode_number(e["point"][k]) == least[k] for k in others)]


def _worst(values: list[tuple[float, dict]], op: str, threshold: float) -> tuple[float, dict]:
    """The selected value that is furthest on the failing side (a NaN wins: it always fails)."""
    for value, point in values:
        if math.isnan(value):
            return value, point
    if op == "==":
        return max(values, key=lambda vp: abs(vp[0] - threshold))
    return min(values, key=lambda vp: vp[0]) if op in (">=", ">") else max(values, key=lambda vp: vp[0])


def evaluate_gate(summary: Mapping[str, Sequence[Mapping[str, Any]]], gate: Any) -> GateVerdict:
    metric, op = str(_field(gate, "metric")), str(_field(gate, "op"))
    threshold = decode_number(_field(gate, "value"))
    at = _field(gate, "at") or None
    at = {str(k): float(decode_number(v)) for k, v in at.items()} if at else None
    name = gate_name(metric, op, threshold, at)
    if op not in _OPS:
        raise UserError(f"gate '{name}': unknown comparison {op!r} (use one of {', '.join(_OPS)})")
    if metric not in summary:
        raise UserError(f"gate '{name}': metric '{metric}' is not in the report "
                        f"(available: {', '.join(sorted(summary)) or 'none'})")
    entries = _select(summary[metric], at)
    if not entries:
        points = "; ".join(", ".join(f"{k}={e['point'][k]}" for k in sorted(e["point"])) or "-" for e in summary[metric])
        raise UserError(f"gate '{name}': no sweep point of '{metric}' matches the budget "
                        f"(points: {points or 'none'})")
    measured, point = _worst([(decode_number(e["value"]), dict(e["point"])) for e in entries], op, threshold)
    passed = not math.isnan(measured) and _OPS[op](measured, threshold)
    where = ", ".join(f"{k}={point[k]}" for k in sorted(point))
    message = (f"gate '{name}' {'passed' if passed else 'FAILED'}: measured {metric} = {_fmt(measured)}"
               f"{f' at {where}' if where else ''}, threshold {op} {_fmt(threshold)}"
               f"{f' (worst of {len(entries)} points)' if len(entries) > 1 else ''}")
    return GateVerdict(metric, op, threshold, at, measured, point, passed, message)


def evaluate_gates(summary: Mapping[str, Sequence[Mapping[str, Any]]], gates: Sequence[Any]) -> list[GateVerdict]:
    """One verdict per gate (dicts or ``pcert.spec.model.Gate`` objects); see module docstring."""
    return [evaluate_gate(summary, gate) for gate in gates]


def write_junit(verdicts: Sequence[GateVerdict], path: Path, suite: str = "pcert.gates") -> Path:
    """JUnit XML with one testcase per gate; a failing gate carries a ``<failure>`` with its message."""
    failures = sum(not v.passed for v in verdicts)
    root = ET.Element("testsuites", name="pcert", tests=str(len(verdicts)), failures=str(failures), errors="0")
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(verdicts)), failures=str(failures),
                         errors="0", skipped="0")
    for verdict in verdicts:
        case = ET.SubElement(node, "testcase", classname=suite, name=verdict.name, time="0")
        if verdict.passed:
            ET.SubElement(case, "system-out").text = verdict.message
        else:
            failure = ET.SubElement(case, "failure", message=verdict.message, type="GateFailed")
            failure.text = verdict.message
    ET.indent(root)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
