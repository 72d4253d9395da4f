"""Write a run's proof report atomically: report.json, bounds.npz, model.onnx, MPS files, HTML.

A run directory is either complete or absent. Everything is built in a hidden temporary
sibling (``.tmp-...``), fsynced, and renamed into place in one ``os.rename``; any exception
or interrupt removes the temporary directory and never touches earlier runs. Names are
``<UTC timestamp>-<plan hash[:12]>`` with ``-1``, ``-2``, ... appended if taken.

``report.json`` is deterministic: the same record gives the same bytes except for the
``created`` and ``timings`` keys (non-finite numbers are encoded as in ``encoding``).

Run directory layout::

    report.json   schema_version, kind (single|ensemble), created, timings, spec {path, sha256,
                  text}, plan, plan_hash, model {file, sha256}, data {descriptor, sha256},
                  environment {versions, device, dtype, arithmetic, seed}, points, summary,
                  gates, verdicts, sidecar {file, sha256, arrays: name -> {shape, dtype, sha256}},
                  mps_files: name -> {file, sha256}, bounds (single model) | null,
                  ensemble (votes, MILP records) | null
    bounds.npz    every tensor: param_{lower,upper,nominal}_NNN, x_test, y_test, output_lower,
                  output_upper, nominal_output, prediction, certified, input_{lower,upper},
                  plane_*, ensemble_{votes,labels,prediction,certificates,scores,R,spread}
    model.onnx    the model as given (architecture and initial weights)
    mps/*.mps     the multi-sample MILPs as solved
    report.html   self-contained summary with figures
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .encoding import dumps, to_jsonable
from pcert.compiler.plan import file_sha256

from .html import render_html
from .record import BoundsRecord, EnsembleRecord, RunRecord
from .schema import SCHEMA_VERSION, validate_report
from .sidecar import array_sha256, param_key, write_npz

REPORT_FILE = "report.json"
SIDECAR_FILE = "bounds.npz"
MODEL_FILE = "model.onnx"
HTML_FILE = "report.html"
MPS_DIR = "mps"


def _bounds_arrays(b: BoundsRecord, num_points: int) -> dict[str, np.ndarray]:
    if not len(b.lower) == len(b.upper) == len(b.nominal):
        raise ValueError("bounds record: lower, upper and nominal must list the same parameters")
    arrays: dict[str, np.ndarray] = {}
    for i, (lo, hi, nom) in enumerate(zip(b.lower, b.upper, b.nominal)):
        if lo.shape != hi.shape or lo.shape != (num_points, *nom.shape):
            raise ValueError(f"bounds record: parameter {i} bounds {lo.shape}/{hi.shape} do not match "
                             f"[P={num_points}, *{nom.shape}]")
        arrays[param_key("lower", i)], arrays[param_key("upper", i)], arrays[param_key("nominal", i)] = lo, hi, nom
    n = len(b.x_test)
    expected = {"output_lower": (num_points, n), "output_upper": (num_points, n), "certified": (num_points, n),
                "nominal_output": (n,), "prediction": (n,), "y_test": (n,)}
    named = {"x_test": b.x_test, "y_test": b.y_test, "output_lower": b.output_lower, "output_upper": b.output_upper,
             "nominal_output": b.nominal_output, "prediction": b.prediction, "certified": b.certified.astype(bool)}
    for name, lead in expected.items():
        if named[name].shape[:len(lead)] != lead:
            raise ValueError(f"bounds record: {name} has shape {named[name].shape}, expected leading {lead}")
    arrays.update(named)
    if (b.input_lower is None) != (b.input_upper is None):
        raise ValueError("bounds record: input_lower and input_upper go together")
    if b.input_lower is not None:
        arrays["input_lower"], arrays["input_upper"] = b.input_lower, b.input_upper
    if b.plane is not None:
        arrays.update(plane_x=b.plane.x, plane_y=b.plane.y, plane_prediction=b.plane.prediction,
                      plane_certified=b.plane.certified.astype(bool))
    return arrays


def _ensemble_arrays(e: EnsembleRecord) -> dict[str, np.ndarray]:
    arrays = {"ensemble_votes": e.votes, "ensemble_labels": e.labels, "ensemble_prediction": e.prediction,
              "ensemble_certificates": e.certificates}
    n = len(e.votes)
    for name, array in arrays.items():
        if len(array) != n:
            raise ValueError(f"ensemble record: {name} has {len(array)} rows, votes have {n}")
    for name, array in (("ensemble_scores", e.scores), ("ensemble_R", e.R), ("ensemble_spread", e.spread)):
        if array is not None:
            arrays[name] = array
    return arrays


def build_report(record: RunRecord, *, created: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The report dictionary (sidecar file hash still empty) and the sidecar arrays."""
    arrays: dict[str, np.ndarray] = {}
    bounds = ensemble = None
    if record.bounds is not None:
        b = record.bounds
        arrays.update(_bounds_arrays(b, len(record.points)))
        bounds = {"method": b.method, "task": b.task, "objective": b.objective, "steps": b.steps,
                  "first_nonfinite_step": b.first_nonfinite_step, "objective_values": b.objective_values,
                  "num_params": len(b.nominal), "input_box": b.input_lower is not None,
                  "plane": b.plane is not None}
    if record.ensemble is not None:
        e = record.ensemble
        arrays.update(_ensemble_arrays(e))
        ensemble = {"scheme": e.scheme, "vote": e.vote, "num_classes": e.num_classes, "milp": e.milp,
                    "scores": e.scores is not None, "R": e.R is not None, "spread": e.spread is not None}
    for name in record.mps_files:
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"MPS file name must be a plain file name, got {name!r}")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": "ensemble" if ensemble is not None else "single",
        "created": created,
        "timings": record.timings,
        "spec": {"path": record.spec_path, "sha256": record.spec_sha256, "text": record.spec_text},
        "plan": record.plan,
        "plan_hash": record.plan_hash,
        "model": {"file": MODEL_FILE, "sha256": record.onnx_sha256},
        "data": {"descriptor": record.data_descriptor, "sha256": record.data_sha256},
        "environment": {"versions": record.versions, "device": record.device, "dtype": record.dtype,
                        "arithmetic": record.arithmetic, "seed": record.seed},
        "points": record.points,
        "summary": record.summary,
        "gates": record.gates,
        "verdicts": record.verdicts,
        "sidecar": {"file": SIDECAR_FILE, "sha256": "",
                    "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": array_sha256(a)}
                               for name, a in sorted(arrays.items())}},
        "mps_files": {name: {"file": f"{MPS_DIR}/{name}", "sha256": hashlib.sha256(content).hexdigest()}
                      for name, content in sorted(record.mps_files.items())},
        "bounds": bounds,
        "ensemble": ensemble,
    }
    return to_jsonable(report), arrays


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, root: Path, base: str) -> Path:
    """Rename ``tmp`` to the first free name ``base``, ``base-1``, ...; never reuse a name."""
    suffix = 0
    while True:
        target = root / (base if suffix == 0 else f"{base}-{suffix}")
        suffix += 1
        if os.path.lexists(target):
            continue
        try:
            os.rename(tmp, target)
        except OSError:
            if os.path.lexists(target):   # lost a race for this name: try the next one
                continue
            raise
        return target


def write_report(record: RunRecord, output_root: Path) -> Path:
    """Write a complete run directory under ``output_root`` and return its path."""
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    base = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{record.plan_hash[:12]}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{base}-", dir=root))
    try:
        report, arrays = build_report(record, created=now.isoformat(timespec="microseconds"))
        _write_file(tmp / MODEL_FILE, record.onnx_bytes)
        if record.mps_files:
            (tmp / MPS_DIR).mkdir()
            for name, content in record.mps_files.items():
                _write_file(tmp / MPS_DIR / name, content)
            _fsync_path(tmp / MPS_DIR)
        write_npz(tmp / SIDECAR_FILE, arrays)
        _fsync_path(tmp / SIDECAR_FILE)
        report["sidecar"]["sha256"] = file_sha256(tmp / SIDECAR_FILE)
        validate_report(report)
        _write_file(tmp / REPORT_FILE, dumps(report).encode("ascii"))
        _write_file(tmp / HTML_FILE, render_html(report, arrays).encode("utf-8"))
        os.chmod(tmp, 0o755)
        _fsync_path(tmp)
        final = _publish(tmp, root, base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(root)
    return final
