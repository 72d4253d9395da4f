"""Lower a checked Spec to a Plan: resolve files, check them against each other, fix the schedule.

Everything that can be known before training is decided here, so `pcert compile` fails fast on
a model that does not fit the data or a budget the recipe cannot carry, and the runtime
executes a plan without re-interpreting the spec.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pcert import __version__
from pcert.compiler.plan import Plan, file_sha256, plan_hash
from pcert.errors import SpecError, UserError
from pcert.spec import resolve_path
from pcert.spec.diagnostics import Reporter
from pcert.spec.model import BoundedThreat, Spec, UnboundedThreat

# Fields that name files: replaced by their content hash in the plan's normal form.
FILE_FIELDS = ("model", "data.path", "data.test_path", "data.images", "data.labels",
               "data.test_images", "data.test_labels", "ensemble.path")


@dataclass(frozen=True)
class Resolved:
    """What compilation loaded, handed to the runtime so it need not load it twice."""

    plan: Plan
    spec: Spec
    model: Any | None      # ImportedModel
    data: Any | None       # Dataset
    scores: Any | None = None  # ScoresEnsemble (`ensemble scores`)


def spec_error(spec: Spec, field: str, message: str, hint: str | None = None) -> SpecError:
    """A positioned error at the place where `field` was written."""
    reporter = Reporter(spec.source_path, spec.source_text)
    reporter.error(spec.locate(field), message, hint)
    return SpecError(diagnostics=reporter.diagnostics)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if obj is None:
            return None
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
    return obj


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


def _resolve(spec: Spec, rel: str) -> Path:
    return resolve_path(spec, rel).resolve()


def _at(spec: Spec, field: str, action: Callable[[], Any]) -> Any:
    """Run a loading step; a user error it raises is re-positioned at the spec field."""
    try:
        return action()
    except SpecError:
        raise
    except UserError as exc:
        raise spec_error(spec, field, str(exc)) from None


def normal_spec(spec: Spec) -> tuple[dict[str, Any], dict[str, str]]:
    """The spec's meaning as JSON, file paths replaced by content hashes; plus the path map."""
    tree = spec.model_dump(mode="json")
    tree.pop("output", None)
    paths: dict[str, str] = {}
    for field in FILE_FIELDS:
        rel = _get(tree, field)
        if rel is None:
            continue
        path = _resolve(spec, rel)
        if not path.is_file():  # also when the spec was parsed with check_files=False
            raise spec_error(spec, field, f"file '{rel}' not found", f"looked for {path}")
        paths[field] = str(path)
        _set(tree, field, "sha256:" + file_sha256(path))
    return tree, paths


def sweep_points(spec: Spec) -> tuple[list[str], list[dict[str, float]]]:
    """Cartesian product of the swept budgets, in a fixed order of budget names."""
    threat = spec.threat
    if isinstance(threat, BoundedThreat):
        axes = {"n": threat.features.n, "eps": threat.features.eps,
                "m": threat.labels.m, "nu": threat.labels.nu}
    elif isinstance(threat, UnboundedThreat):
        axes = {"n": threat.n}
    else:
        axes = {"K": threat.K}
    names = list(axes)
    values = [v if isinstance(v, list) else [v] for v in axes.values()]
    return names, [dict(zip(names, combo)) for combo in itertools.product(*values)]


def schedule(spec: Spec, n_train: int) -> dict[str, Any]:
    train = spec.train
    steps_per_epoch = math.ceil(n_train / train.batch)
    total = steps_per_epoch * train.epochs
    return {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "last_batch": n_train - (steps_per_epoch - 1) * train.batch,
        "lr_first": train.lr,
        "lr_last": train.lr / (1.0 + train.lr_decay * (total - 1)),
    }


def _fit_data_to_model(spec: Spec, graph: Any, data: Any) -> Any:
    """Check that model and data agree (inputs, outputs, classes); return data shaped for the model."""
    from pcert.compiler.onnx_import import check_input_compatible

    shape = _at(spec, "model", lambda: check_input_compatible(graph, tuple(data.x_train.shape[1:])))
    data = data.reshaped(shape)
    out = int(np.prod(graph.output_shape))
    loss = spec.train.loss
    if loss == "cross_entropy" and out != data.num_classes:
        raise spec_error(spec, "model", f"the model has {out} outputs but the data have {data.num_classes} classes",
                         "cross_entropy needs one output (logit) per class")
    if loss == "binary_cross_entropy" and (out != 1 or data.num_classes != 2):
        raise spec_error(spec, "model", f"binary_cross_entropy needs 1 output and 2 classes; "
                         f"the model has {out} outputs and the data {data.num_classes} classes",
                         "use cross_entropy for more than two classes")
    if loss == "mse" and data.task == "regression":
        targets = int(np.prod(data.y_train.shape[1:])) if data.y_train.ndim > 1 else 1
        if out != targets:
            raise spec_error(spec, "model", f"the model has {out} outputs but the data have {targets} targets")
    frozen = spec.train.frozen
    n_param = len(graph.parametric_layers)
    if frozen >= n_param:
        raise spec_error(spec, "train.frozen", f"frozen: {frozen} leaves nothing to train "
                         f"(the model has {n_param} parametric layers)", f"use at most {n_param - 1}")
    classes = []
    if isinstance(spec.threat, BoundedThreat) and spec.threat.labels.classes:
        classes += [("threat.labels.classes", c) for c in spec.threat.labels.classes]
    if getattr(spec.objective, "classes", None):
        classes += [("objective.classes", c) for c in spec.objective.classes]
    for field, c in classes:
        if data.num_classes is not None and not 0 <= c < data.num_classes:
            raise spec_error(spec, field, f"class {c} does not exist (the data have classes 0..{data.num_classes - 1})")
    return data


def partitions(spec: Spec) -> int | None:
    """Disjoint training partitions: one per member, M*d for Finite Aggregation."""
    ens = spec.ensemble
    if ens is None or ens.members is None:
        return None
    return ens.members * (ens.spread or 1) if ens.kind == "fa" else ens.members


def _check_sizes(spec: Spec, data: Any) -> None:
    n_train, n_test = len(data.x_train), len(data.x_test)
    if spec.train.batch > n_train and spec.ensemble is None:
        raise spec_error(spec, "train.batch", f"batch {spec.train.batch} is larger than the training set ({n_train})",
                         f"use batch: {n_train} for full-batch training")
    count = partitions(spec)
    if count is not None and count > n_train:
        raise spec_error(spec, "ensemble.members", f"{count} partitions for {n_train} training points")
    if spec.certify.kind == "multi_sample" and spec.certify.batch and spec.certify.batch > n_test:
        raise spec_error(spec, "certify.batch", f"batch {spec.certify.batch} exceeds the test set ({n_test})")


def ensemble_layout(spec: Spec, n_test: int, names: list[str], points: list[dict]) -> dict[str, Any] | None:
    ens = spec.ensemble
    if ens is None:
        return None
    layout: dict[str, Any] = {
        "kind": ens.kind,
        "members": ens.members,
        "partitions": partitions(spec),
        "spread": ens.spread,
        "seeds": ens.seeds or 1,
        "vote": spec.vote,
        "member": spec.member.kind,
        "member_budgets": spec.member.n or [],
        "certify": spec.certify.kind,
        "K": [p["K"] for p in points] if names == ["K"] else [],
    }
    if spec.certify.kind == "multi_sample":
        batch = spec.certify.batch or n_test
        layout["milp"] = {
            "batch": batch,
            "batches": math.ceil(n_test / batch),
            "time_limit": spec.certify.time_limit,
            "solver": spec.certify.solver,
            "formulation": "exact per test point and target class (weights 2/1/0, ties to the smaller class)",
        }
    return layout


def lower(spec: Spec, *, parity: bool = True) -> Resolved:
    """Check `spec` against its model and data and build the Plan."""
    from pcert.compiler.data import load_data
    from pcert.compiler.onnx_import import check_parity, import_onnx

    normal, paths = normal_spec(spec)
    names, points = sweep_points(spec)
    meaning: dict[str, Any] = {"spec": normal, "sweep": {"names": names, "points": points}}
    model = data = scores = None
    if spec.ensemble is None or spec.ensemble.kind != "scores":
        model_path = Path(paths["model"])
        model = _at(spec, "model", lambda: import_onnx(model_path))
        if parity:
            _at(spec, "model", lambda: check_parity(model, model_path))
        task = "regression" if spec.train.loss == "mse" else "classification"
        data = _at(spec, "data", lambda: load_data(spec.data, _resolve(spec, '.'), task))
        data = _fit_data_to_model(spec, model.graph, data)
        _check_sizes(spec, data)
        meaning["model"] = {"sha256": model.sha256, "opset": model.opset, "graph": model.graph.summary()}
        meaning["data"] = {
            "descriptor": data.descriptor, "sha256": data.sha256, "task": data.task,
            "num_classes": data.num_classes, "n_train": int(len(data.x_train)), "n_test": int(len(data.x_test)),
            "feature_shape": list(data.x_train.shape[1:]),
            "n_trusted": int(data.trusted.sum()) if data.trusted is not None else 0,
        }
        meaning["schedule"] = schedule(spec, len(data.x_train))
        n_test = len(data.x_test)
    else:
        from pcert.runtime.ensemble.scores import load_scores

        scores = _at(spec, "ensemble.path", lambda: load_scores(Path(paths["ensemble.path"])))
        n_test = int(scores.labels.shape[0])
        meaning["scores"] = {"n_test": n_test, "members": int(scores.scores.shape[1]),
                             "classes": int(scores.scores.shape[2])}
    meaning["ensemble"] = ensemble_layout(spec, n_test, names, points)
    meaning["work"] = work_summary(spec, meaning)
    provenance = {
        "spec_path": str(Path(spec.source_path).resolve()),
        "spec_sha256": hashlib.sha256(spec.source_text.encode("utf-8")).hexdigest(),
        "spec_text": spec.source_text,
        "files": paths,
        "output": str(_resolve(spec, spec.output)),
        "compiled_by": f"pcert {__version__}",
        "parity_checked": parity and model is not None,
    }
    plan = Plan(meaning=meaning, provenance=provenance, hash=plan_hash(meaning))
    return Resolved(plan=plan, spec=spec, model=model, data=data, scores=scores)


def work_summary(spec: Spec, meaning: dict[str, Any]) -> dict[str, Any]:
    points = len(meaning["sweep"]["points"])
    ens = meaning.get("ensemble")
    if ens is None:
        return {"trainings": 1, "sweep_points": points, "members": 0, "milps": 0,
                "steps": meaning["schedule"]["total_steps"]}
    members = 0 if ens["kind"] == "scores" else (ens["partitions"] or 0) * ens["seeds"]
    milps = ens["milp"]["batches"] * points if "milp" in ens else 0
    return {"trainings": members, "sweep_points": points, "members": ens["members"] or meaning.get("scores", {}).get("members", 0),
            "milps": milps, "steps": meaning.get("schedule", {}).get("total_steps", 0)}

