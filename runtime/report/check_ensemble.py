"""Independent check of an ensemble run: votes -> prediction -> per-sample certificates ->
aggregates, and every stored multi-sample (MILP) record.

MILP conventions checked: ``dual_bound`` bounds the number of batch points the adversary can
make wrong (points already wrong included) from above, ``incumbent`` is the number broken by the
stored ``allocation`` (re-evaluated here), and the sound certified count of a batch is
``len(indices) - floor(dual_bound)`` (the optimum is an integer, so flooring the bound is
sound). A stored MPS model omits the ``wrong`` points already misclassified, so its
re-solved optimum plus ``wrong`` must not exceed the dual bound (and must equal its floor
when the stored status is optimal). ``multi_sample_certified_accuracy`` at K is the sum of the
certified counts of the batches with that K over the number of test points; ``certified_accuracy``
of an ensemble is the multi-sample value where MILP records exist for that K, else the
per-sample one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .check_metrics import exact
from .encoding import decode_number

MILP_TOL = 1e-6


def _members(report: dict, arrays: dict) -> Any:
    """MemberOutputs from the stored votes/scores. DPA* scores are stored already averaged over
    seeds, which makes them a DPA ensemble; a scores file is DPA, or FA when it has a spread."""
    from pcert.runtime.ensemble.outputs import MemberOutputs
    e = report["ensemble"]
    votes = arrays["ensemble_votes"].astype(np.int64)
    spread = arrays.get("ensemble_spread")
    scheme = "fa" if spread is not None else "dpa"
    if spread is None:
        spread = np.arange(votes.shape[1], dtype=np.int64)[:, None]
    return MemberOutputs(votes, arrays.get("ensemble_scores"), int(e["num_classes"]), spread.astype(np.int64), scheme)


def _solve_mps(path: Path, time_limit: float | None) -> tuple[bool, float]:
    """Re-solve an MPS file with HiGHS: (proven optimal?, best objective found)."""
    import highspy
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("threads", 1)
    if time_limit is not None:
        highs.setOptionValue("time_limit", float(time_limit))
    highs.readModel(str(path))
    highs.run()
    optimal = highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return optimal, float(highs.getInfo().objective_function_value)


def _check_milp(res: Any, run_dir: Path, report: dict, ens: Any, labels: np.ndarray, R: np.ndarray | None,
                mps_time_limit: float | None) -> dict[int, int]:
    """Check every MILP record; returns certified points per K (summed over batches)."""
    from pcert.runtime.ensemble.multi_sample import evaluate_allocation
    vote = report["ensemble"]["vote"]
    certified: dict[int, int] = {}
    covered: dict[int, list[int]] = {}
    for n, entry in enumerate(report["ensemble"]["milp"]):
        where = f"ensemble.milp[{n}] (K={entry['K']})"
        K = int(entry["K"])
        indices = np.asarray(entry.get("indices", range(len(labels))), dtype=np.int64)
        covered.setdefault(K, []).extend(indices.tolist())
        dual, incumbent = decode_number(entry["dual_bound"]), decode_number(entry["incumbent"])
        allocation = np.asarray(entry["allocation"], dtype=np.int64)
        if allocation.sum() > K:
            res.failures.append(f"{where}.allocation: uses {int(allocation.sum())} poisoned points > K={K}")
        sub_R = None if R is None else R[indices]
        outputs = ens.votes[indices] if ens.scores is None else ens.scores[indices]
        broken = evaluate_allocation(outputs, labels[indices], allocation, scheme=ens.scheme, vote=vote, R=sub_R,
                                     spread=None if ens.scheme != "fa" else ens.spread, num_classes=ens.num_classes)
        if not math.isclose(broken, incumbent, abs_tol=MILP_TOL):
            res.failures.append(f"{where}.incumbent: stored {incumbent:g} != recomputed {broken} points broken "
                                f"by the stored allocation")
        if len(entry["broken"]) != broken or not set(entry["broken"]) <= set(indices.tolist()):
            res.failures.append(f"{where}.broken: stored {len(entry['broken'])} indices {entry['broken'][:10]} "
                                f"!= recomputed {broken} points broken by the allocation")
        if math.isnan(dual) or dual < incumbent - MILP_TOL:
            res.failures.append(f"{where}.dual_bound: stored {dual:g} is below the incumbent {incumbent:g}")
        sound = len(indices) - min(math.floor(dual + MILP_TOL), len(indices)) if math.isfinite(dual) else 0
        if entry["certified_count"] != sound:
            res.failures.append(f"{where}.certified_count: stored {entry['certified_count']} != recomputed "
                                f"{sound} = batch size {len(indices)} - floor(dual bound {dual:g})")
        certified[K] = certified.get(K, 0) + int(entry["certified_count"])
        if entry.get("mps"):
            optimal, value = _solve_mps(run_dir / report["mps_files"][entry["mps"]]["file"], mps_time_limit)
            value += int(entry.get("wrong", 0))
            if not optimal:           # any feasible attack found must still respect the stored bound
                res.skipped.append(f"{where}.mps: re-solve did not prove optimality (limit {mps_time_limit} s); "
                                   f"only its incumbent was compared with the stored dual bound")
            if math.isfinite(value) and value > dual + MILP_TOL:
                res.failures.append(f"{where}.mps: re-solved optimum {value:g} (incl. {entry.get('wrong', 0)} wrong) "
                                    f"exceeds the stored dual bound {dual:g}")
            elif optimal and entry["status"] == "optimal" and round(value) != math.floor(dual + MILP_TOL):
                res.failures.append(f"{where}.mps: re-solved optimum {value:g} != floor of the stored optimal "
                                    f"dual bound {dual:g}")
    for K, idx in covered.items():
        if sorted(idx) != list(range(len(labels))):
            res.failures.append(f"ensemble.milp (K={K}): batches cover {len(set(idx))} of {len(labels)} test points "
                                f"(each must appear exactly once)")
    if report["ensemble"]["milp"]:
        res.checked.append("MILP records (allocations re-evaluated, dual bounds, MPS re-solved)")
    return certified


def check_ensemble(res: Any, run_dir: Path, report: dict, arrays: dict, mps_time_limit: float | None) -> None:
    from pcert.runtime.ensemble.per_sample import per_sample_certificate
    from pcert.runtime.ensemble.voting import member_votes, predict

    from .check import check_aggregates

    e = report["ensemble"]
    ens = _members(report, arrays)
    labels = arrays["ensemble_labels"].astype(np.int64)
    if ens.scores is not None:
        from_scores = member_votes(ens.scores)
        if not np.array_equal(from_scores, ens.votes):
            i, j = (int(v) for v in np.argwhere(from_scores != ens.votes)[0])
            res.failures.append(f"ensemble_votes[{i}][{j}]: stored {int(ens.votes[i, j])} != recomputed "
                                f"{int(from_scores[i, j])} (arg-max of ensemble_scores)")
    pred = predict(ens.votes, ens.scores, ens.num_classes, e["vote"])
    stored_pred = arrays["ensemble_prediction"]
    if not np.array_equal(pred, stored_pred):
        i = int(np.flatnonzero(pred != stored_pred)[0])
        res.failures.append(f"ensemble_prediction[{i}]: stored {int(stored_pred[i])} != recomputed {int(pred[i])} "
                            f"({e['vote']} vote of ensemble_votes)")
    res.checked.append("ensemble predictions from votes")
    certs = arrays["ensemble_certificates"].astype(np.int64)
    R = arrays.get("ensemble_R")
    if R is None:
        recomputed = per_sample_certificate(ens, labels, e["vote"])
        bad = recomputed != certs
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            res.failures.append(f"ensemble_certificates[{i}]: stored {int(certs[i])} != recomputed "
                                f"{int(recomputed[i])} ({int(bad.sum())} points)")
        res.checked.append("per-sample certificates")
    else:
        res.skipped.append("per-sample certificates with intrinsic robustness R (no independent formula)")
    multi = _check_milp(res, run_dir, report, ens, labels, R, mps_time_limit) if e["milp"] else {}
    points = report["points"]
    n = len(labels)
    K = lambda p: int(decode_number(points[p].get("K", 0)))
    metrics: dict[str, Callable[[int], float]] = {
        "nominal_accuracy": lambda p: float((stored_pred == labels).mean()),
        "per_sample_certified_accuracy": lambda p: float((certs >= K(p)).mean()),
        "multi_sample_certified_accuracy": lambda p: multi.get(K(p), math.nan) / n,
        "certified_accuracy": lambda p: multi[K(p)] / n if K(p) in multi else float((certs >= K(p)).mean()),
    }
    lookup = lambda name: (lambda p: exact(metrics[name](p))) if name in metrics else None
    check_aggregates(res, points, [("summary", report["summary"])], lookup)
