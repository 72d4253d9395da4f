"""The run record: everything a proof report needs, as plain data.

The runtime fills a ``RunRecord`` and hands it to ``write_report``. Nothing here knows how
models were trained: small values are JSON-able Python data, big tensors are numpy arrays
(they go to the ``bounds.npz`` sidecar). Hashes of the spec text and the ONNX bytes are
derived properties, so a record can never carry a hash that disagrees with its own content.
"""
from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal, Mapping, Sequence

import numpy as np

VERSIONED_PACKAGES = ("pcert", "torch", "onnx", "onnxruntime", "pyomo", "highspy", "numpy")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def collect_versions() -> dict[str, str]:
    """Versions of the packages a result depends on (``"missing"`` if not installed)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _np(value: Any) -> np.ndarray:
    """Tensor or array-like -> numpy array (torch tensors are detached and moved to the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def summary_from_metrics(points: Sequence[Mapping[str, Any]],
                         per_point: Sequence[Mapping[str, float]]) -> dict[str, list[dict[str, Any]]]:
    """Per-point metric dicts (e.g. ``Certificates.metrics``) -> the report's ``summary``
    (metric -> [{"point", "value"}] in sweep order)."""
    if len(points) != len(per_point):
        raise ValueError(f"{len(per_point)} metric sets for {len(points)} sweep points")
    names = sorted({name for metrics in per_point for name in metrics})
    return {name: [{"point": dict(p), "value": float(m[name])} for p, m in zip(points, per_point) if name in m]
            for name in names}


@dataclass
class PlaneRecord:
    """Grid evaluation over a 2-D input plane (AGT paper Fig. 1 style).

    ``x`` [W] and ``y`` [H] are the grid coordinates; ``prediction`` [H, W] the nominal class;
    ``certified`` [P, H, W] whether that prediction is certified at each budget point.
    """

    x: np.ndarray
    y: np.ndarray
    prediction: np.ndarray
    certified: np.ndarray


@dataclass
class BoundsRecord:
    """A single model trained with parameter bounds (AGT) and certified on test points.

    Parameter lists follow the engine's order [W0, b0, W1, b1, ...] over parametric layers;
    ``lower``/``upper`` carry a leading budget-point axis P. ``input_lower``/``input_upper``
    are the input boxes the output bounds were computed over (backdoor trigger boxes); when
    absent the boxes are the test points themselves.
    """

    method: str                                  # "ibp" | "crown" | "crown+ibp"
    task: Literal["classification", "regression"]
    objective: dict[str, Any]                    # {"kind", "metric", "eps", "norm", "classes"}
    steps: list[dict[str, Any]]                  # {"step", "epoch", "lr", "width": [P][layer] -> {min, mean, max}}
    first_nonfinite_step: list[int | None]       # per point
    lower: list[np.ndarray]                      # [P, *shape] per parameter
    upper: list[np.ndarray]
    nominal: list[np.ndarray]                    # [*shape] per parameter
    x_test: np.ndarray                           # [N, *in_shape]
    y_test: np.ndarray                           # [N] int (classification) or [N, k] float
    output_lower: np.ndarray                     # [P, N, C]
    output_upper: np.ndarray
    nominal_output: np.ndarray                   # [N, C]
    prediction: np.ndarray                       # [N]
    certified: np.ndarray                        # [P, N] bool
    objective_values: list[dict[str, float]]     # per point, the engine's metric values
    input_lower: np.ndarray | None = None
    input_upper: np.ndarray | None = None
    plane: PlaneRecord | None = None

    @classmethod
    def from_engine(cls, result: Any, certificates: Any, x_test: Any, y_test: Any, *,
                    objective: dict[str, Any], method: str, task: str,
                    input_lower: Any = None, input_upper: Any = None,
                    plane: PlaneRecord | None = None) -> "BoundsRecord":
        """Build from the AGT engine's ``AGTResult`` and ``Certificates`` (duck-typed)."""
        def opt(value: Any) -> np.ndarray | None:
            return None if value is None else _np(value)

        return cls(
            method=method, task=task, objective=dict(objective), steps=list(result.steps),
            first_nonfinite_step=list(result.first_nonfinite_step),
            lower=[_np(t) for t in result.lower], upper=[_np(t) for t in result.upper],
            nominal=[_np(t) for t in result.nominal], x_test=_np(x_test), y_test=_np(y_test),
            output_lower=_np(certificates.lower), output_upper=_np(certificates.upper),
            nominal_output=_np(certificates.nominal_output),
            prediction=_np(certificates.prediction), certified=_np(certificates.certified).astype(bool),
            objective_values=[dict(m) for m in certificates.metrics],
            input_lower=opt(input_lower), input_upper=opt(input_upper), plane=plane,
        )


@dataclass
class EnsembleRecord:
    """An aggregation ensemble: member votes, per-sample and multi-sample certificates.

    ``certificates`` [N] is the per-sample certified radius (-1 where the ensemble is wrong).
    Each ``milp`` entry is one (K, batch) solve: {"K", "batch", "indices", "status",
    "incumbent", "dual_bound", "gap", "time", "method", "allocation", "broken",
    "certified_count", "mps"} where ``indices`` are the test points of the batch and ``mps``
    names a file in ``RunRecord.mps_files`` (or is None).
    """

    scheme: str                                  # "dpa" | "dpa_star" | "fa" | "scores"
    vote: str                                    # "plurality" | "roe"
    num_classes: int
    votes: np.ndarray                            # [N, M] int
    labels: np.ndarray                           # [N]
    prediction: np.ndarray                       # [N]
    certificates: np.ndarray                     # [N] int
    scores: np.ndarray | None = None             # [N, M, C]
    R: np.ndarray | None = None                  # [N, M] intrinsic robustness
    spread: np.ndarray | None = None             # FA: [M, d] partitions per member
    milp: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunRecord:
    """Everything one ``pcert run`` produced; see the module docstring."""

    spec_text: str
    spec_path: str
    plan: dict[str, Any]
    plan_hash: str
    onnx_bytes: bytes
    data_descriptor: dict[str, Any]
    data_sha256: str
    points: list[dict[str, Any]]                 # budget sweep points, e.g. {"n": 10, "eps": 0.01, "m": 0}
    summary: dict[str, list[dict[str, Any]]]     # metric -> [{"point": {...}, "value": v}]
    gates: list[dict[str, Any]] = field(default_factory=list)   # {"metric", "op", "value", "at"}
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # GateVerdict.to_dict() of each gate
    versions: dict[str, str] = field(default_factory=collect_versions)
    device: str = "cpu"
    dtype: str = "float32"
    arithmetic: dict[str, Any] = field(default_factory=dict)    # rounding / margin note
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)     # seconds per phase
    bounds: BoundsRecord | None = None
    ensemble: EnsembleRecord | None = None
    mps_files: dict[str, bytes] = field(default_factory=dict)   # file name -> MPS content

    @property
    def spec_sha256(self) -> str:
        return sha256_bytes(self.spec_text.encode("utf-8"))

    @property
    def onnx_sha256(self) -> str:
        return sha256_bytes(self.onnx_bytes)
