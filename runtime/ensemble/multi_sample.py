"""Multi-sample certificates: how many points of a batch can a K-point poisoning break at once?

Per-sample certificates let the adversary pick a different poisoning for every test point. A
real adversary commits to one poisoned training set, so on a batch it breaks fewer points; the
exact count (conditions in ``adversary``) is found by enumeration, by branch-and-bound over
poisoned member sets, or by the MILP. ``solver="auto"`` picks branch-and-bound where it applies
(DPA/DPA* with R = 0, no ROE pair conditions; on the CIFAR-like votes of ``bench/milp.py`` it
proved optimality 3-400x faster than the MILP), else enumeration when its estimated work is small,
else the MILP; all are exact (for ROE with R > 0 enumeration and MILP solve the same sound
relaxation). The certified count is ``batch size - broken``, with ``broken`` the proven bound (the
MILP's dual bound, floored: it is integral; branch-and-bound's bound over its open subtrees), never
an incumbent.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pcert.errors import DataError

from .adversary import AttackInstance, broken_points, build_instance, controlled
from .enumerate import (branch_bound_applies, enumeration_size, partition_allocation, solve_branch_bound,
                        solve_enumerate)
from .milp import solve_milp
from .outputs import MemberOutputs, VOTES, check_labels, check_robustness, member_outputs
from .per_sample import per_sample_certificate

SOLVERS = ("auto", "milp", "enumerate", "branch_bound")
_ENUM_MADDS_PER_S = 2e9      # measured: 2.2-2.6e9 multiply-adds per second, one core (numpy float32)
_ENUM_AUTO_SECONDS = 30.0    # enumeration time is predictable, the MILP's is not
_ENUM_R_SLOWDOWN = 8.0       # measured: with R > 0 the per-vector member pass runs ~6.6x below that rate


@dataclass(frozen=True)
class BatchResult:
    indices: list[int]           # test indices in this batch
    status: str                  # "optimal", "time_limit", ... ("trivial": nothing to attack)
    method: str                  # "enumerate" | "branch_bound" | "branch_bound+milp" | "milp" | "trivial"
    incumbent: int               # broken points under the best attack found (incl. already wrong)
    dual_bound: float            # proven bound on broken points (incl. already wrong)
    gap: float                   # dual_bound - incumbent
    time: float                  # seconds (build + solve)
    allocation: list[int]        # poisoned points per partition of the best attack found
    broken: list[int]            # test indices that attack breaks (recomputed, incl. wrong ones)
    certified_count: int         # batch size - floor(dual_bound)
    wrong: int                   # points already wrong
    conditioned: int             # points that needed a model (neither wrong nor per-sample safe)


@dataclass
class MultiSampleResult:
    K: int
    vote: str
    scheme: str
    batches: list[BatchResult] = field(default_factory=list)
    per_sample_certified: int = 0    # points whose published per-sample certificate is >= K

    @property
    def total(self) -> int:
        return sum(len(b.indices) for b in self.batches)

    @property
    def certified_count(self) -> int:
        return sum(b.certified_count for b in self.batches)

    @property
    def certified_fraction(self) -> float:
        return self.certified_count / self.total if self.total else 0.0

    @property
    def optimal(self) -> bool:
        return all(b.status in ("optimal", "trivial") for b in self.batches)

    def to_dict(self) -> dict:
        return {"K": self.K, "vote": self.vote, "scheme": self.scheme, "total": self.total,
                "certified_count": self.certified_count, "certified_fraction": self.certified_fraction,
                "per_sample_certified": self.per_sample_certified, "optimal": self.optimal,
                "batches": [asdict(b) for b in self.batches]}


def _prepare(outputs, labels, R, scheme, vote, spread, num_classes) -> tuple[MemberOutputs, np.ndarray, np.ndarray]:
    if vote not in VOTES:
        raise DataError(f"unknown vote {vote!r} (expected one of {', '.join(VOTES)})")
    if num_classes is None and np.asarray(outputs).ndim == 2:
        lab = np.asarray(labels)
        num_classes = int(max(np.asarray(outputs).max(), lab.max() if lab.size else 0)) + 1
    ens = member_outputs(outputs, scheme=scheme, spread=spread, num_classes=num_classes)
    if vote == "roe" and ens.scores is None:
        raise DataError("run-off election needs member scores [N, M, C], not only votes")
    n = ens.votes.shape[0]
    labels = check_labels(labels, n, ens.num_classes)
    return ens, labels, check_robustness(R, n, ens.num_members)


def _broken_by(inst: AttackInstance, alloc: np.ndarray) -> np.ndarray:
    """[B] bool: points broken by one allocation (already-wrong points included)."""
    eff = alloc.astype(np.float32)[None] @ inst.incidence()
    ctrl, touched = controlled(inst, eff)
    out = inst.wrong.copy()
    out[inst.points[broken_points(inst, ctrl, touched)[0]]] = True
    return out


def _partition_of_member(inst: AttackInstance) -> np.ndarray:
    """[M] the partition that feeds each member (DPA/DPA*: one per member)."""
    part = np.zeros(inst.num_members, dtype=np.int64)
    part[inst.spread[:, 0]] = np.arange(inst.spread.shape[0])
    return part


def _pick_method(inst: AttackInstance, solver: str, time_limit: float | None) -> str:
    """The solver for a non-trivial batch: ``solver`` itself unless it is "auto"."""
    bb = branch_bound_applies(inst)
    if solver == "branch_bound" and not bb:
        raise DataError("solver branch_bound needs DPA/DPA* members with R = 0 and no run-off pair conditions")
    if solver != "auto":
        return solver
    if bb:
        return "branch_bound"
    _, madds = enumeration_size(inst)
    budget = _ENUM_AUTO_SECONDS if time_limit is None else min(_ENUM_AUTO_SECONDS, time_limit)
    seconds = madds / _ENUM_MADDS_PER_S * (1.0 if inst.r_free else _ENUM_R_SLOWDOWN)
    return "enumerate" if seconds <= budget else "milp"


def _branch_bound(inst: AttackInstance, time_limit: float | None, mps_path: str | None,
                  then_milp: bool) -> tuple[np.ndarray, float, str, str]:
    """(allocation, bound, status, method) by branch-and-bound. Its bound over open subtrees is weak
    (per point), so under "auto" a search stopped after half the time limit hands the rest to the MILP
    and the tighter of the two proven bounds counts."""
    t0 = time.perf_counter()
    res = solve_branch_bound(inst, time_limit=None if time_limit is None else time_limit / (2 if then_milp else 1))
    alloc = np.zeros(inst.spread.shape[0], dtype=np.int64)
    alloc[_partition_of_member(inst)[res.members]] = 1
    if res.complete or not then_milp:
        return alloc, float(res.bound), "optimal" if res.complete else "time_limit", "branch_bound"
    sol = solve_milp(inst, time_limit=max(time_limit - (time.perf_counter() - t0), 1e-3), mps_path=mps_path)
    found = max(res.broken, int(_broken_by(inst, sol.allocation)[inst.points].sum()))
    if found > res.broken:
        alloc = sol.allocation
    bound = min(float(res.bound), sol.dual_bound)
    proven = sol.status == "optimal" or np.floor(bound + 1e-6) <= found
    return alloc, bound, "optimal" if proven else sol.status, "branch_bound+milp"


def _solve_batch(ens: MemberOutputs, labels: np.ndarray, R: np.ndarray, K: int, vote: str, safe: np.ndarray,
                 indices: np.ndarray, solver: str, time_limit: float | None, mps_path: str | None) -> BatchResult:
    t0 = time.perf_counter()
    inst = build_instance(ens, labels, K, R, vote, safe=safe)
    wrong = int(inst.wrong.sum())
    method = "trivial" if len(inst.points) == 0 or K == 0 else _pick_method(inst, solver, time_limit)
    if method == "trivial":
        alloc, bound, status = np.zeros(ens.num_partitions, dtype=np.int64), 0.0, "trivial"
    elif method == "enumerate":
        found, vec, space = solve_enumerate(inst)
        alloc, bound, status = partition_allocation(inst, space, vec), float(found), "optimal"
    elif method == "branch_bound":
        alloc, bound, status, method = _branch_bound(inst, time_limit, mps_path, then_milp=solver == "auto")
    else:
        sol = solve_milp(inst, time_limit=time_limit, mps_path=mps_path)
        alloc, bound, status = sol.allocation, sol.dual_bound, sol.status
    broken = _broken_by(inst, alloc)
    incumbent = int(broken.sum())
    dual = wrong + bound
    # a real attack above the bound would be a solver or model failure: never certify past it
    certified = len(labels) - min(max(int(np.floor(dual + 1e-6)), incumbent), len(labels))
    return BatchResult(
        indices=indices.tolist(), status=status, method=method, incumbent=incumbent, dual_bound=float(dual),
        gap=float(dual - incumbent), time=time.perf_counter() - t0, allocation=alloc.tolist(),
        broken=indices[broken].tolist(), certified_count=certified, wrong=wrong, conditioned=len(inst.points))


def certify_multi_sample(outputs: np.ndarray, labels: np.ndarray, K: int, *, scheme: str = "dpa",
                         vote: str = "plurality", R: np.ndarray | None = None, spread: np.ndarray | None = None,
                         num_classes: int | None = None, batch: int | None = None,
                         time_limit: float | None = None, solver: str = "auto",
                         mps_dir: str | None = None) -> MultiSampleResult:
    """Certify consecutive batches of ``batch`` test points (default: all) against K poisoned points.

    outputs: member votes [N, M] or scores [N, M, C] (``dpa_star``: per-seed scores [N, P, S, C]);
    R: intrinsic robustness [N, M] per test point and member (0 = none); spread: FA map [P, d];
    time_limit: seconds per MILP (auto also avoids enumerations expected to take longer);
    mps_dir: write the MILP of each batch solved by the MILP there as ``batch_<i>.mps``.
    """
    if not isinstance(K, (int, np.integer)) or K < 0:
        raise DataError(f"poisoning budget K must be a non-negative integer, got {K!r}")
    if time_limit is not None and not time_limit > 0:
        raise DataError(f"time_limit must be positive seconds, got {time_limit!r}")
    if solver not in SOLVERS:
        raise DataError(f"unknown solver {solver!r} (expected one of {', '.join(SOLVERS)})")
    ens, labels, R = _prepare(outputs, labels, R, scheme, vote, spread, num_classes)
    n = len(labels)
    batch = n if batch is None else int(batch)
    if batch <= 0:
        raise DataError(f"batch must be positive, got {batch}")
    safe = per_sample_certificate(ens, labels, vote) >= K
    result = MultiSampleResult(K=int(K), vote=vote, scheme=scheme, per_sample_certified=int(safe.sum()))
    for b, start in enumerate(range(0, n, batch)):
        idx = np.arange(start, min(start + batch, n))
        mps = None if mps_dir is None else os.path.join(mps_dir, f"batch_{b}.mps")
        result.batches.append(_solve_batch(ens.take(idx), labels[idx], R[idx], int(K), vote, safe[idx], idx,
                                           solver, time_limit, mps))
    return result


def evaluate_allocation(outputs: np.ndarray, labels: np.ndarray, allocation: np.ndarray, *, scheme: str = "dpa",
                        vote: str = "plurality", R: np.ndarray | None = None, spread: np.ndarray | None = None,
                        num_classes: int | None = None) -> int:
    """How many test points the best votes of the members that ``allocation`` (poisoned points per
    partition) controls can make wrong, already-wrong points included."""
    ens, labels, R = _prepare(outputs, labels, R, scheme, vote, spread, num_classes)
    alloc = np.asarray(allocation)
    if alloc.shape != (ens.num_partitions,) or not np.issubdtype(alloc.dtype, np.integer) or (alloc < 0).any():
        raise DataError(f"allocation must be {ens.num_partitions} non-negative integers, one per partition")
    inst = build_instance(ens, labels, int(alloc.sum()), R, vote)
    return int(_broken_by(inst, alloc).sum())
