"""JSON encoding of report values: deterministic, strict JSON, no NaN/Infinity tokens.

JSON has no representation of non-finite floats, and Python's default (``Infinity``,
``NaN``) is not JSON. Reports therefore encode them as the strings ``"inf"``, ``"-inf"``
and ``"nan"`` wherever a number is expected (``decode_number`` reverses this). Numpy
scalars and arrays become Python numbers and lists; tuples become lists.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode_float(value: float) -> float | str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def to_jsonable(value: Any) -> Any:
    """Recursively convert to JSON-safe plain data (see module docstring)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return encode_float(float(value))
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a report: {value!r}")


def decode_number(value: Any) -> float:
    """A report number (possibly an encoded non-finite string) as a float."""
    if isinstance(value, str):
        if value not in NONFINITE:
            raise ValueError(f"not a report number: {value!r}")
        return NONFINITE[value]
    if value is None:
        return math.nan
    return float(value)


def dumps(value: Any) -> str:
    """Canonical report JSON: sorted keys, fixed indentation, strict (no NaN tokens)."""
    return json.dumps(to_jsonable(value), sort_keys=True, indent=1, allow_nan=False, ensure_ascii=True) + "\n"
