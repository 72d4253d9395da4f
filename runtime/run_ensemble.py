"""Run an ensemble plan: train (or load) members, vote, certify per sample and per batch of points."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pcert.compiler.lower import Resolved
from pcert.runtime.ensemble import MultiSampleResult, certify_multi_sample, member_outputs, per_sample_certificate
from pcert.runtime.ensemble.voting import average_seeds, member_votes, predict
from pcert.runtime.report import EnsembleRecord


def _members(resolved: Resolved, quiet: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """Scores [N, M, C] (DPA* seeds averaged), labels, R, FA spread and the certifiers' scheme."""
    spec = resolved.spec
    ens = spec.ensemble
    if ens.kind == "scores":
        loaded = resolved.scores
        return loaded.scores, loaded.labels, loaded.R, loaded.spread, loaded.scheme
    from pcert.runtime.ensemble.members import train_ensemble
    from pcert.runtime.execute import train_config

    data = resolved.data
    run = train_ensemble(resolved.model.graph, data.x_train, data.y_train, train_config(spec), data.x_test,
                         scheme=ens.kind, members=ens.members, seeds=ens.seeds or 1, spread=ens.spread or 1,
                         member=spec.member.kind, budgets=tuple(spec.member.n or ()), method=spec.bounds, cover=spec.cover,
                         executor=spec.executor.kind, workers=spec.executor.workers, address=spec.executor.address,
                         quiet=quiet)
    scores = average_seeds(run.scores) if ens.kind == "dpa_star" else run.scores
    spread = run.partition.spread if ens.kind == "fa" else None
    return scores, data.y_test, run.R, spread, "fa" if ens.kind == "fa" else "dpa"


def milp_records(result: MultiSampleResult, mps_dir: Path) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The report's MILP entries for one K, and the MPS files `certify_multi_sample` wrote to mps_dir."""
    records, files = [], {}
    for b, batch in enumerate(result.batches):
        mps = mps_dir / f"batch_{b}.mps"
        name = f"K{result.K}_batch{b}.mps" if mps.is_file() else None
        if name:
            files[name] = mps.read_bytes()
        records.append(asdict(batch) | {"K": result.K, "mps": name})
    return records, files


def run_ensemble(resolved: Resolved, *, device: str, seed: int, quiet: bool) -> tuple[EnsembleRecord, dict[str, Any]]:
    """Votes, per-sample certificates and, when asked, exact multi-sample certificates for every K."""
    spec = resolved.spec
    start = time.perf_counter()
    scores, labels, R, spread, scheme = _members(resolved, quiet)
    timings = {"members": time.perf_counter() - start}
    outputs = member_outputs(scores, scheme=scheme, spread=spread)
    votes = member_votes(scores)
    prediction = predict(votes, scores, outputs.num_classes, spec.vote)
    radius = per_sample_certificate(outputs, labels, spec.vote)
    nominal = float((prediction == labels).mean())
    points = resolved.plan.meaning["sweep"]["points"]
    per_point, milps, mps_files = [], [], {}
    start = time.perf_counter()
    for point in points:
        K = int(point["K"])
        metrics = {"nominal_accuracy": nominal, "per_sample_certified_accuracy": float((radius >= K).mean())}
        if spec.certify.kind == "multi_sample":
            with tempfile.TemporaryDirectory() as folder:
                result = certify_multi_sample(scores, labels, K, scheme=scheme, vote=spec.vote, R=R, spread=spread,
                                              num_classes=outputs.num_classes, batch=spec.certify.batch,
                                              time_limit=spec.certify.time_limit, solver=spec.certify.solver,
                                              mps_dir=folder)
                records, files = milp_records(result, Path(folder))
            milps += records
            mps_files |= files
            metrics["multi_sample_certified_accuracy"] = result.certified_fraction
        metrics["certified_accuracy"] = metrics.get("multi_sample_certified_accuracy",
                                                    metrics["per_sample_certified_accuracy"])
        per_point.append(metrics)
    timings["certify"] = time.perf_counter() - start
    record = EnsembleRecord(scheme=spec.ensemble.kind, vote=spec.vote, num_classes=outputs.num_classes,
                            votes=votes, labels=labels, prediction=prediction, certificates=radius,
                            scores=scores, R=R, spread=spread, milp=milps)
    coverage = ("up to K in-place modifications of training points, partitions fixed before the attack "
                "(intrinsic robustness from AGT)" if R is not None else
                "up to K insertions, deletions or modifications of training points")
    return record, {"timings": timings, "metrics": per_point, "mps_files": mps_files,
                    "arithmetic": {"certificates": "integer vote arithmetic; MILP certified count from the dual bound",
                                   "threat_coverage": coverage}}
