"""Terminal summary of a report (what ``pcert report RUN_DIR`` prints)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from pcert.errors import UserError

from .encoding import decode_number
from .gate import evaluate_gates, gate_name


def point_label(point: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """``eps=0.01, n=10``: budgets sorted by name (only ``keys`` when given)."""
    return ", ".join(f"{k}={point[k]}" for k in sorted(point) if keys is None or k in keys) or "-"


def swept_keys(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """The budgets that vary across the points (all of them when nothing varies)."""
    keys = sorted({k for p in points for k in p})
    varying = [k for k in keys if len({repr(p.get(k)) for p in points}) > 1]
    return varying or keys


def metric_table(summary: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """One row per sweep point (first-seen order), one column per metric (sorted); "" where absent.

    Budgets that are the same at every point are left out of the row labels.
    """
    points: list[Mapping[str, Any]] = []
    for entries in summary.values():
        for entry in entries:
            if entry["point"] not in points:
                points.append(entry["point"])
    keys = swept_keys(points)
    metrics = sorted(summary)
    values = {(m, point_label(e["point"])): f"{decode_number(e['value']):.4g}" for m in metrics for e in summary[m]}
    rows = [[point_label(p, keys)] + [values.get((m, point_label(p)), "") for m in metrics] for p in points]
    return ["budget"] + metrics, rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def gate_lines(report: Mapping[str, Any]) -> list[str]:
    """One line per gate: PASS/FAIL with measured value, or ERROR when it cannot be evaluated."""
    lines = []
    for gate in report.get("gates", []):
        try:
            verdict = evaluate_gates(report["summary"], [gate])[0]
            lines.append(f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.message}")
        except UserError as error:
            name = gate_name(gate["metric"], gate["op"], decode_number(gate["value"]), gate.get("at"))
            lines.append(f"ERROR {name}: {error}")
    return lines


def format_summary(report: Mapping[str, Any]) -> str:
    """A table of every metric at every sweep point, then the gate verdicts."""
    head = [f"pcert run  {report.get('created', '')}",
            f"spec   {report['spec']['path']}  (sha256 {report['spec']['sha256'][:12]})",
            f"plan   {report['plan_hash'][:12]}   model sha256 {report['model']['sha256'][:12]}   "
            f"kind {report['kind']}"]
    env = report.get("environment", {})
    head.append(f"device {env.get('device', '?')}  dtype {env.get('dtype', '?')}  seed {env.get('seed', '?')}")
    header, rows = metric_table(report["summary"])
    body = _table(header, rows) if rows else ["(no metrics)"]
    gates = gate_lines(report)
    return "\n".join(head + [""] + body + ([""] + ["gates:"] + gates if gates else [])) + "\n"
