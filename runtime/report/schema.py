"""The report's JSON schema (``report.schema.json``, shipped as package data) and validation."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

SCHEMA_VERSION = 1


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    text = resources.files("pcert.runtime.report").joinpath("report.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def schema_errors(report: dict[str, Any]) -> list[str]:
    """Every schema violation as ``path: message`` (empty when the report is valid)."""
    validator = jsonschema.Draft202012Validator(load_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(report), key=lambda e: list(map(str, e.absolute_path)))]


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every violation (a writer bug, never user input)."""
    errors = schema_errors(report)
    if errors:
        raise ValueError("report does not match report.schema.json:\n  " + "\n  ".join(errors))
