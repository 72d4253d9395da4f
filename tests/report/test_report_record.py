"""Run record helpers: engine conversion, summary construction, versions."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pcert.runtime.report import BoundsRecord, collect_versions, summary_from_metrics
from report_fixtures import single_record


def test_from_engine_converts_tensors_and_keeps_everything():
    b = single_record(plane=False).bounds
    t = lambda a: torch.as_tensor(np.asarray(a))
    result = SimpleNamespace(nominal=[t(a) for a in b.nominal], lower=[t(a) for a in b.lower],
                             upper=[t(a) for a in b.upper], steps=b.steps,
                             first_nonfinite_step=tuple(b.first_nonfinite_step))
    certs = SimpleNamespace(lower=t(b.output_lower), upper=t(b.output_upper), nominal_output=t(b.nominal_output),
                            prediction=t(b.prediction), certified=t(b.certified), metrics=b.objective_values)
    rebuilt = BoundsRecord.from_engine(result, certs, t(b.x_test), t(b.y_test), objective=b.objective,
                                       method="ibp", task="classification")
    for name in ("x_test", "y_test", "output_lower", "output_upper", "nominal_output", "prediction", "certified"):
        got = getattr(rebuilt, name)
        assert isinstance(got, np.ndarray) and np.array_equal(got, getattr(b, name)), name
    assert all(np.array_equal(x, y) for x, y in zip(rebuilt.lower, b.lower))
    assert rebuilt.certified.dtype == bool and rebuilt.input_lower is None
    assert rebuilt.first_nonfinite_step == b.first_nonfinite_step


def test_summary_from_metrics():
    points = [{"n": 0}, {"n": 5}]
    summary = summary_from_metrics(points, [{"a": 1.0, "b": 0.5}, {"a": np.float32(0.25)}])
    assert summary == {"a": [{"point": {"n": 0}, "value": 1.0}, {"point": {"n": 5}, "value": 0.25}],
                       "b": [{"point": {"n": 0}, "value": 0.5}]}
    with pytest.raises(ValueError):
        summary_from_metrics(points, [{"a": 1.0}])


def test_versions_and_hashes():
    versions = collect_versions()
    assert {"python", "pcert", "torch", "onnx", "onnxruntime", "pyomo", "highspy", "numpy"} <= set(versions)
    assert versions["numpy"] == np.__version__
    record = single_record(plane=False)
    import hashlib
    assert record.onnx_sha256 == hashlib.sha256(record.onnx_bytes).hexdigest()
