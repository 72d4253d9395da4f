"""Which metrics a spec produces and which budgets a gate may pin (single source of truth).

The compiler and the report use the same functions, so a gate accepted here always names a
number the run will actually compute.
"""
from __future__ import annotations

from pcert.spec.model import (BackdoorObjective, BoundedThreat, GeneralThreat, Spec, Threat,
                              UnboundedThreat, UntargetedObjective)

_UNTARGETED = {
    "mse": {"worst_case_mse", "best_case_mse", "nominal_mse"},
    "cross_entropy": {"worst_case_cross_entropy", "nominal_cross_entropy"},
    "accuracy": {"worst_case_accuracy", "nominal_accuracy"},
}


def metrics_for(spec: Spec) -> set[str]:
    """Names of the metrics a run of ``spec`` reports (what a ``gate`` may test)."""
    if spec.ensemble is not None:
        names = {"certified_accuracy", "per_sample_certified_accuracy", "nominal_accuracy"}
        if spec.certify.kind == "multi_sample":
            names.add("multi_sample_certified_accuracy")
        return names
    objective = spec.objective
    if isinstance(objective, UntargetedObjective):
        return set(_UNTARGETED[objective.metric])
    if isinstance(objective, BackdoorObjective):
        return {"backdoor_certified_accuracy", "nominal_accuracy"}
    return {"certified_accuracy", "nominal_accuracy"}


def budget_names(threat: Threat) -> tuple[str, ...]:
    """Budgets a gate's ``at`` may name for this threat."""
    return tuple(budget_paths(threat))


def budget_paths(threat: Threat) -> dict[str, str]:
    """Budget name -> dotted field path inside the spec (``n`` -> ``threat.features.n``)."""
    if isinstance(threat, BoundedThreat):
        return {"n": "threat.features.n", "m": "threat.labels.m",
                "eps": "threat.features.eps", "nu": "threat.labels.nu"}
    if isinstance(threat, UnboundedThreat):
        return {"n": "threat.n"}
    assert isinstance(threat, GeneralThreat)
    return {"K": "threat.K"}
