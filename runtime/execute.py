"""Execute a compiled plan: train with bounds (or train and certify an ensemble) into a RunRecord.

This is the one place that knows both the plan's vocabulary and the engines' APIs; the engines
stay free of spec types and the report writer stays free of training.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from pcert.compiler.lower import Resolved
from pcert.errors import ResourceError, UserError
from pcert.runtime.bounds.interval import input_box
from pcert.runtime.report import RunRecord, summary_from_metrics
from pcert.spec.model import BoundedThreat, Spec


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA device is available; use device cpu or auto")
    return requested


def train_config(spec: Spec):
    from pcert.runtime.agt import TrainConfig

    t = spec.train
    return TrainConfig(epochs=t.epochs, batch=t.batch, lr=t.lr, lr_decay=t.lr_decay, momentum=t.momentum,
                       loss=t.loss, clip=t.clip, clip_method=t.clip_method, frozen=t.frozen,
                       order_seed=t.order_seed)


def budget_points(spec: Spec, points: list[dict[str, Any]]):
    from pcert.runtime.agt import BudgetPoint

    threat = spec.threat
    if isinstance(threat, BoundedThreat):
        classes = tuple(threat.labels.classes) if threat.labels.classes else None
        return [BudgetPoint(kind="bounded", n=int(p["n"]), eps=float(p["eps"]), feature_norm=threat.features.norm,
                            m=int(p["m"]), nu=float(p["nu"]), label_norm=threat.labels.norm,
                            label_classes=classes, paired=threat.paired) for p in points]
    return [BudgetPoint(kind="unbounded", n=int(p["n"])) for p in points]


def objective_of(spec: Spec):
    from pcert.runtime.agt import Objective

    o = spec.objective
    return Objective(kind=o.kind, metric=getattr(o, "metric", "mse"), eps=getattr(o, "eps", 0.0),
                     norm=getattr(o, "norm", "inf"),
                     classes=tuple(o.classes) if getattr(o, "classes", None) else None)


def _progress(total: int, quiet: bool, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, disable=quiet, leave=False, unit="step")

    def update(done: int, _total: int) -> None:
        bar.n = done
        bar.refresh()

    return bar, update


def run_single(resolved: Resolved, device: str, dtype: torch.dtype, quiet: bool) -> tuple[Any, dict[str, Any]]:
    """AGT training with every sweep point at once, then certificates on the objective's data."""
    from pcert.runtime.agt import certify, train_with_bounds
    from pcert.runtime.plane import plane_record
    from pcert.runtime.report import BoundsRecord

    spec, data, graph = resolved.spec, resolved.data, resolved.model.graph
    points = resolved.plan.meaning["sweep"]["points"]
    method = spec.bounds
    timings: dict[str, float] = {}
    bar, progress = _progress(resolved.plan.meaning["schedule"]["total_steps"], quiet, "AGT")
    start = time.perf_counter()
    try:
        result = train_with_bounds(graph, data.x_train, data.y_train, train_config(spec), budget_points(spec, points),
                                   method=method, dtype=dtype, device=device, trusted=data.trusted, progress=progress,
                                   cover=spec.cover)
    finally:
        bar.close()
    timings["train"] = time.perf_counter() - start
    objective = objective_of(spec)
    x_eval, y_eval = (data.x_test, data.y_test) if spec.objective.on == "test" else (data.x_train, data.y_train)
    start = time.perf_counter()
    certs = certify(graph, result, x_eval, y_eval, objective, method=method, task=data.task)
    timings["certify"] = time.perf_counter() - start
    box = {}
    if objective.kind == "backdoor":
        lo, hi = input_box(torch.as_tensor(np.asarray(x_eval)), objective.eps, result.lower[0].dtype)
        box = {"input_lower": lo.cpu().numpy(), "input_upper": hi.cpu().numpy()}  # the box certify used
    plane = plane_record(graph, result, data.x_train, method) if data.task == "classification" and int(np.prod(graph.input_shape)) == 2 else None
    record = BoundsRecord.from_engine(result, certs, x_eval, y_eval, objective=objective.__dict__ | {"classes": list(objective.classes or [])},
                                      method=method, task=data.task, plane=plane, **box)
    return record, {"timings": timings, "arithmetic": result.arithmetic, "metrics": certs.metrics}


def execute(resolved: Resolved, *, device: str | None = None, seed: int | None = None, quiet: bool = False) -> RunRecord:
    """Run everything the plan describes; return the record the report writer stores."""
    spec = resolved.spec
    device = resolve_device(device or spec.device)
    dtype = torch.float64 if spec.precision == "float64" else torch.float32
    seed = spec.seed if seed is None else seed
    torch.manual_seed(seed)
    np.random.seed(seed)
    points = resolved.plan.meaning["sweep"]["points"]
    try:
        if spec.ensemble is None:
            record, extra = run_single(resolved, device, dtype, quiet)
            ensemble = None
        else:
            from pcert.runtime.run_ensemble import run_ensemble

            ensemble, extra = run_ensemble(resolved, device=device, seed=seed, quiet=quiet)
            record = None
    except torch.OutOfMemoryError as exc:
        raise ResourceError(f"out of memory on {device}: {str(exc).splitlines()[0]}") from None
    provenance = resolved.plan.provenance
    model_path = provenance["files"].get("model")
    return RunRecord(
        spec_text=provenance["spec_text"], spec_path=provenance["spec_path"],
        plan=resolved.plan.model_dump(mode="json"), plan_hash=resolved.plan.hash,
        onnx_bytes=open(model_path, "rb").read() if model_path else b"",
        data_descriptor=resolved.plan.meaning.get("data", {}).get("descriptor", {}),
        data_sha256=resolved.plan.meaning.get("data", {}).get("sha256", ""),
        points=points, summary=summary_from_metrics(points, extra["metrics"]),
        gates=[g.model_dump(mode="json") for g in spec.gates],
        device=device, dtype=str(dtype).replace("torch.", ""), arithmetic=extra.get("arithmetic", {}),
        seed=seed, timings=extra.get("timings", {}), bounds=record, ensemble=ensemble,
        mps_files=extra.get("mps_files", {}),
    )
