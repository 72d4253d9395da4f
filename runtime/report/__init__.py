"""Proof reports: run record, atomic writer, HTML, terminal summary, gates/JUnit, independent check."""
from .check import CheckResult, check_run, load_report
from .encoding import decode_number
from .gate import GateVerdict, evaluate_gates, write_junit
from .record import BoundsRecord, EnsembleRecord, PlaneRecord, RunRecord, collect_versions, summary_from_metrics
from .schema import SCHEMA_VERSION, validate_report
from .summary import format_summary
from .writer import build_report, write_report

__all__ = [
    "BoundsRecord", "CheckResult", "EnsembleRecord", "GateVerdict", "PlaneRecord", "RunRecord",
    "SCHEMA_VERSION", "build_report", "check_run", "collect_versions", "decode_number", "evaluate_gates",
    "format_summary", "load_report", "summary_from_metrics", "validate_report", "write_junit", "write_report",
]
