"""Independent check of a run directory, trusting only report.json and its sidecar files.

It re-verifies every pinned hash, rebuilds the network from ``model.onnx``, recomputes the
output bounds of every test point from the stored parameter bounds, and re-derives every
certified flag and every aggregate in ``summary``. For ensembles it re-derives predictions,
per-sample certificates and aggregates from the votes, re-evaluates each stored MILP
allocation and re-solves each stored MPS file with HiGHS. Every disagreement becomes one
failure message naming the field, the stored value and the recomputed value.

Soundness conventions (shared with the engine):
- stored output bounds must *contain* the recomputed ones (within ``atol + rtol * |x|``):
  the recomputation is sound, so containment proves the stored bounds sound;
- a stored flag ``True`` must be certain even with ties broken against it (argmax ties go
  to the smaller class index; for one-output models class 1 means output > 0, or > 0.5 after
  a final sigmoid); a stored ``False`` is accepted where only an exact tie separates the two
  readings; a regression flag means "all output bounds finite";
- metrics are compared with the interval their recomputation allows (``check_metrics``);
- a point that went non-finite during training certifies nothing;
- NaN anywhere in a bound is never certified and never equal to a number.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pcert.errors import PcertError, UserError

from .check_metrics import SingleRun, predict, single_metrics, sure
from .encoding import decode_number
from .schema import schema_errors
from .sidecar import array_sha256, param_key, read_npz
from .writer import REPORT_FILE, file_sha256

RTOL, ATOL = 1e-4, 1e-5          # float32 recomputation noise allowed on bounds and outputs


@dataclass
class CheckResult:
    run_dir: Path
    failures: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        lines = [f"check {self.run_dir}: {'OK' if self.ok else f'FAILED ({len(self.failures)} problems)'}"]
        lines += [f"  FAIL {m}" for m in self.failures]
        lines += [f"  ok   {m}" for m in self.checked]
        lines += [f"  skip {m}" for m in self.skipped]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.8g}" if isinstance(value, float) else str(value)


def _compare_hash(res: CheckResult, what: str, stored: str, actual: str) -> bool:
    if stored != actual:
        res.failures.append(f"{what}: stored sha256 {stored} != recomputed {actual}")
        return False
    res.checked.append(f"{what} sha256")
    return True


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


# ---------------------------------------------------------------- hashes and sidecar

def _check_hashes(res: CheckResult, run_dir: Path, report: dict) -> dict[str, np.ndarray] | None:
    spec = report["spec"]
    _compare_hash(res, "spec.text", spec["sha256"], hashlib.sha256(spec["text"].encode("utf-8")).hexdigest())
    plan = report["plan"]
    if "meaning" in plan:
        from pcert.compiler.plan import plan_hash
        recomputed = plan_hash(plan["meaning"])
        for where, stored in (("plan_hash", report["plan_hash"]), ("plan.hash", plan.get("hash", recomputed))):
            if stored != recomputed:
                res.failures.append(f"{where}: stored {stored} != recomputed {recomputed} from plan.meaning")
        res.checked.append("plan hash")
        pinned = [("model", report["model"]["sha256"], plan["meaning"].get("model", {}).get("sha256")),
                  ("data", report["data"]["sha256"], plan["meaning"].get("data", {}).get("sha256")),
                  ("spec", spec["sha256"], plan.get("provenance", {}).get("spec_sha256"))]
        for what, stored, planned in pinned:
            if planned is not None and planned != stored:
                res.failures.append(f"{what} sha256: report has {stored}, the plan pins {planned}")
    else:
        res.skipped.append("plan hash (plan has no 'meaning' to hash)")
    for what, entry in [("model.onnx", report["model"])] + [(f"mps file {n}", e) for n, e in report["mps_files"].items()]:
        path = run_dir / entry["file"]
        if not path.is_file():
            res.failures.append(f"{what}: file {entry['file']} is missing")
        else:
            _compare_hash(res, what, entry["sha256"], file_sha256(path))
    side = report["sidecar"]
    path = run_dir / side["file"]
    if not path.is_file():
        res.failures.append(f"sidecar: file {side['file']} is missing")
        return None
    _compare_hash(res, "sidecar", side["sha256"], file_sha256(path))
    try:
        arrays = read_npz(path)
    except Exception as error:  # a corrupt zip/npy: report it, do not crash the checker
        res.failures.append(f"sidecar: cannot be read ({error})")
        return None
    listed = side["arrays"]
    for name in sorted(set(listed) | set(arrays)):
        if name not in arrays:
            res.failures.append(f"sidecar array {name}: listed in report.json but missing from {side['file']}")
        elif name not in listed:
            res.failures.append(f"sidecar array {name}: present in {side['file']} but not listed in report.json")
        else:
            meta, array = listed[name], arrays[name]
            if list(array.shape) != meta["shape"] or array.dtype.str != meta["dtype"]:
                res.failures.append(f"sidecar array {name}: stored shape/dtype {meta['shape']}/{meta['dtype']} "
                                    f"!= file {list(array.shape)}/{array.dtype.str}")
            elif array_sha256(array) != meta["sha256"]:
                res.failures.append(f"sidecar array {name}: stored sha256 {meta['sha256']} "
                                    f"!= recomputed {array_sha256(array)}")
    return arrays


# ---------------------------------------------------------------- single model

def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _check_input_box(res: CheckResult, objective: dict, arrays: dict) -> None:
    """The stored input boxes must cover every trigger the objective allows: any l1/l2/l-inf
    ball of radius eps around x lies in the box [x - eps, x + eps]."""
    x, lo, hi = arrays["x_test"], arrays["input_lower"], arrays["input_upper"]
    eps = float(decode_number(objective.get("eps", 0.0)))
    slack = ATOL + RTOL * np.abs(x)
    bad = ~((lo <= x - eps + slack) & (hi >= x + eps - slack))
    if bad.any():
        at = _first_bad(bad)
        res.failures.append(f"input box{list(at)}: stored [{_fmt(float(lo[at]))}, {_fmt(float(hi[at]))}] does not "
                            f"cover x = {_fmt(float(x[at]))} +- eps = {eps:g} ({int(bad.sum())} entries)")
    res.checked.append("input boxes cover the objective's trigger set")


def _check_contains(res: CheckResult, s_lo: np.ndarray, s_hi: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray,
                    method: str) -> None:
    """Stored output bounds must contain the (sound) recomputed ones; NaN only matches NaN."""
    for name, stored, recomputed, sign in (("output_lower", s_lo, r_lo, 1.0), ("output_upper", s_hi, r_hi, -1.0)):
        slack = ATOL + RTOL * np.where(np.isfinite(recomputed), np.abs(recomputed), 0.0)
        inside = (sign * (recomputed - stored) >= -slack) | (np.isnan(stored) & np.isnan(recomputed))
        inside |= (stored == -sign * np.inf)
        bad = ~inside
        if bad.any():
            at = _first_bad(bad)
            rel = "above" if sign > 0 else "below"
            res.failures.append(f"{name}{list(at)}: stored {_fmt(float(stored[at]))} is {rel} recomputed "
                                f"{_fmt(float(recomputed[at]))} ({method}); stored bounds do not contain the "
                                f"recomputed ones in {int(bad.sum())} entries")


def _check_flags(res: CheckResult, b: dict, arrays: dict, flags: np.ndarray, threshold: float) -> None:
    """Re-derive certified flags from the stored (already verified) output bounds."""
    s_lo, s_hi = arrays["output_lower"], arrays["output_upper"]
    if b["task"] == "classification":
        y = arrays["y_test"].astype(np.int64)
        untargeted = b["objective"]["kind"] == "untargeted"
        target = arrays["prediction"].astype(np.int64) if untargeted else y
        must_correct = True if untargeted else (arrays["prediction"] == y)[None]
        tie_aware = sure(s_lo, s_hi, target, tie_wins=True, threshold=threshold) & must_correct
        strict = sure(s_lo, s_hi, target, tie_wins=False, threshold=threshold) & must_correct
        for what, bad in (("True but not provable from the stored bounds", flags & ~tie_aware),
                          ("False but provable from the stored bounds", ~flags & strict)):
            if bad.any():
                p, i = _first_bad(bad)
                res.failures.append(f"certified[{p}][{i}]: stored {bool(flags[p, i])} != recomputed "
                                    f"{bool(tie_aware[p, i])} ({what}; {int(bad.sum())} flags)")
    else:
        bounded = (np.isfinite(s_lo) & np.isfinite(s_hi)).reshape(s_lo.shape[:2] + (-1,)).all(axis=2)
        if not np.array_equal(flags, bounded):
            p, i = _first_bad(flags != bounded)
            res.failures.append(f"certified[{p}][{i}]: stored {bool(flags[p, i])} != recomputed {bool(bounded[p, i])} "
                                f"(regression: certified means finite output bounds)")


def _check_single(res: CheckResult, run_dir: Path, report: dict, arrays: dict) -> None:
    import torch

    from pcert.compiler.onnx_import import import_onnx
    from pcert.runtime.bounds.forward import bound_outputs

    b, points = report["bounds"], report["points"]
    num = b["num_params"]
    lower = [arrays[param_key("lower", i)] for i in range(num)]
    upper = [arrays[param_key("upper", i)] for i in range(num)]
    nominal = [arrays[param_key("nominal", i)] for i in range(num)]
    try:
        graph = import_onnx(run_dir / report["model"]["file"]).graph
    except PcertError as error:
        res.failures.append(f"model.onnx: cannot rebuild the network ({error})")
        return
    shapes = [a.shape for layer in graph.parametric_layers for a in (layer.weight, layer.bias) if a is not None]
    if shapes != [n.shape for n in nominal]:
        res.failures.append(f"parameters: model.onnx has shapes {shapes}, stored nominal params {[n.shape for n in nominal]}")
        return
    P = len(points)
    flags = arrays["certified"].astype(bool)
    finite_points = np.array([s is None for s in b["first_nonfinite_step"]])
    for p in np.flatnonzero(~finite_points):
        if flags[p].any():
            res.failures.append(f"certified[{p}]: point {points[p]} went non-finite at step "
                                f"{b['first_nonfinite_step'][p]} but {int(flags[p].sum())} flags are True")
    for i, (lo, hi, nom) in enumerate(zip(lower, upper, nominal)):
        bad = ~((lo <= nom[None]) & (nom[None] <= hi)) & finite_points.reshape((P,) + (1,) * nom.ndim)
        if bad.any():
            at = _first_bad(bad)
            res.failures.append(f"parameter {i}: nominal value {_fmt(float(nom[at[1:]]))} at {at[1:]} is outside the "
                                f"stored bounds [{_fmt(float(lo[at]))}, {_fmt(float(hi[at]))}] of point {at[0]} "
                                f"({int(bad.sum())} entries)")
    res.checked.append("nominal parameters inside their bounds")

    dtype = torch.float64 if report["environment"]["dtype"] == "float64" else torch.float32
    tensors = lambda arrs: [torch.as_tensor(a, dtype=dtype) for a in arrs]
    x = torch.as_tensor(arrays["x_test"], dtype=dtype)
    n_lo, n_hi = bound_outputs(graph, tensors([n[None] for n in nominal]), tensors([n[None] for n in nominal]), x, x,
                               method="ibp")
    stored_nom = arrays["nominal_output"]
    n_lo = _as_numpy(n_lo)[0].reshape(stored_nom.shape)
    n_hi = _as_numpy(n_hi)[0].reshape(stored_nom.shape)
    # the nominal forward pass must lie in the (rounding-safe) enclosure of itself
    slack = ATOL + RTOL * np.abs(stored_nom)
    bad = ~((n_lo - slack <= stored_nom) & (stored_nom <= n_hi + slack))
    if bad.any():
        at = _first_bad(bad)
        res.failures.append(f"nominal_output{list(at)}: stored {_fmt(float(stored_nom[at]))} is outside the "
                            f"recomputed [{_fmt(float(n_lo[at]))}, {_fmt(float(n_hi[at]))}] ({int(bad.sum())} entries)")
    sigmoid_output = graph.layers[-1].op == "sigmoid"
    threshold = 0.5 if sigmoid_output else 0.0
    pred = predict(stored_nom, threshold)
    if b["task"] == "classification" and not np.array_equal(pred, arrays["prediction"]):
        i = int(np.flatnonzero(pred != arrays["prediction"])[0])
        res.failures.append(f"prediction[{i}]: stored {int(arrays['prediction'][i])} != recomputed {int(pred[i])}")
    res.checked.append("nominal outputs and predictions")

    if b["input_box"]:
        _check_input_box(res, b["objective"], arrays)
        x_lo = torch.as_tensor(arrays["input_lower"], dtype=dtype)
        x_hi = torch.as_tensor(arrays["input_upper"], dtype=dtype)
    else:
        x_lo = x_hi = x
    r_lo, r_hi = bound_outputs(graph, tensors(lower), tensors(upper), x_lo, x_hi, method=b["method"])
    s_lo, s_hi = arrays["output_lower"], arrays["output_upper"]
    r_lo, r_hi = _as_numpy(r_lo).reshape(s_lo.shape), _as_numpy(r_hi).reshape(s_hi.shape)
    _check_contains(res, s_lo, s_hi, r_lo, r_hi, b["method"])
    res.checked.append(f"output bounds contain the {b['method']} recomputation")

    _check_flags(res, b, arrays, flags, threshold)
    res.checked.append("certified flags")

    if b["input_box"]:                               # losses and worst-case accuracy use the clean bounds
        c_lo, c_hi = bound_outputs(graph, tensors(lower), tensors(upper), x, x, method=b["method"])
        c_lo, c_hi = _as_numpy(c_lo).reshape(s_lo.shape), _as_numpy(c_hi).reshape(s_hi.shape)
    else:
        c_lo, c_hi = s_lo, s_hi
    f64 = lambda a: np.asarray(a, dtype=np.float64)
    run = SingleRun(task=b["task"], kind=b["objective"]["kind"], lo=f64(s_lo), hi=f64(s_hi), clean_lo=f64(c_lo),
                    clean_hi=f64(c_hi), nominal=f64(stored_nom), y=arrays["y_test"], prediction=arrays["prediction"],
                    flags=flags, threshold=threshold, sigmoid_output=sigmoid_output)
    sources = [("summary", report["summary"])]
    sources += [("bounds.objective_values", {k: [{"point": points[p], "value": v}] for k, v in vals.items()})
                for p, vals in enumerate(b["objective_values"])]
    check_aggregates(res, points, sources, single_metrics(run))


def check_aggregates(res: CheckResult, points: list, sources: list,
                     lookup: Callable[[str], Callable[[int], tuple[float, float]] | None]) -> None:
    """Compare every stored metric value with the interval its recomputation allows."""
    unknown: set[str] = set()
    known: set[str] = set()
    for source, table in sources:
        for metric, entries in table.items():
            fn = lookup(metric)
            if fn is None:
                unknown.add(metric)
                continue
            known.add(metric)
            for entry in entries:
                if entry["point"] not in points:
                    res.failures.append(f"{source}.{metric}: point {entry['point']} is not a sweep point of the run")
                    continue
                stored = decode_number(entry["value"])
                low, high = fn(points.index(entry["point"]))
                if not low <= stored <= high:
                    want = _fmt((low + high) / 2) if high - low < 1e-5 else f"[{_fmt(low)}, {_fmt(high)}]"
                    res.failures.append(f"{source}.{metric} at {entry['point']}: stored {_fmt(stored)} "
                                        f"!= recomputed {want}")
    res.checked.append("aggregates: " + ", ".join(sorted(known)))
    if unknown:
        res.skipped.append("aggregates without an independent recomputation: " + ", ".join(sorted(unknown)))


def _check_verdicts(res: CheckResult, report: dict) -> None:
    """Stored gate verdicts must be what the stored gates give on the stored summary (which the
    rest of the check re-derives)."""
    from .gate import evaluate_gate
    stored = {v["gate"]: v for v in report["verdicts"]}
    for gate in report["gates"]:
        try:
            verdict = evaluate_gate(report["summary"], gate)
        except UserError as error:
            res.failures.append(f"gate: {error}")
            continue
        mine = stored.pop(verdict.name, None)
        if mine is None:
            if report["verdicts"]:
                res.failures.append(f"verdicts: no stored verdict for gate '{verdict.name}'")
            continue
        measured = decode_number(mine["measured"])
        same = measured == verdict.measured or (math.isnan(measured) and math.isnan(verdict.measured))
        if mine["passed"] != verdict.passed or not same:
            res.failures.append(f"verdicts['{verdict.name}']: stored passed={mine['passed']} measured "
                                f"{_fmt(decode_number(mine['measured']))} != recomputed passed={verdict.passed} "
                                f"measured {_fmt(verdict.measured)}")
    for name in stored:
        res.failures.append(f"verdicts: stored verdict for '{name}', which is not a gate of the run")
    res.checked.append("gate verdicts")


# ---------------------------------------------------------------- entry point

def load_report(run_dir: Path) -> dict[str, Any]:
    """report.json of a run directory (``UserError`` when absent or not JSON)."""
    path = Path(run_dir) / REPORT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{run_dir}: not a pcert run directory (no {REPORT_FILE})") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot be read as JSON ({error})") from None


def check_run(run_dir: Path, *, mps_time_limit: float | None = 60.0) -> CheckResult:
    """Independently re-verify a run directory; see the module docstring. ``mps_time_limit``
    caps each MILP re-solve (seconds; None = solve to optimality)."""
    run_dir = Path(run_dir)
    report = load_report(run_dir)
    res = CheckResult(run_dir)
    errors = schema_errors(report)
    if errors:
        res.failures += [f"report.json schema: {e}" for e in errors]
        return res
    res.checked.append("report.json schema")
    arrays = _check_hashes(res, run_dir, report)
    if arrays is None:
        return res
    missing = [name for name in report["sidecar"]["arrays"] if name not in arrays]
    if missing:
        return res
    _check_verdicts(res, report)
    if report["bounds"] is not None:
        _check_single(res, run_dir, report, arrays)
    if report["ensemble"] is not None:
        from .check_ensemble import check_ensemble
        check_ensemble(res, run_dir, report, arrays, mps_time_limit)
    return res
