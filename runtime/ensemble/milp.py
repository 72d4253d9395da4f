"""The exact multi-sample MILP (Pyomo + HiGHS) over the conditions of ``adversary.AttackInstance``.

Variables. A *column* is a DPA/DPA* group of identical members (same column in every condition
and same R; an integer count) or an FA member (binary). For each column and each threshold r it
can be controlled at (distinct R values below K, plus 0 for round-2 rows) a variable
``y[col, r]`` = number of the column's members whose effective allocation is >= r + 1, ordered
``y[col, r_k] <= y[col, r_{k-1}]``.

* DPA/DPA*: partition = member, so the cheapest way to put y members at level >= r_k costs
  ``sum_k y[col, r_k] * (r_k - r_{k-1})`` poisoned points (r_{-1} = -1); budget <= K.
  With R = 0 this is one binary/integer per column: one poisoned point per partition.
* FA: a[t] poisoned points per partition (binary when R = 0, since one point per partition then
  suffices), ``sum a <= K`` and ``(r + 1) * y[j, r] <= sum_{t spread to j} a[t]``.

Conditions (see ``adversary``): a binary s per target with
``sum_col w * y[col, level at the row's point] >= rhs * s`` for each of its rows, a binary s per
ROE pair with continuous split variables ``q_k >= g_k * s + F_k``, ``q_0 + q_1 <= n`` (for s = 0 the
split q_k = max(F_k, 0) is always feasible, so no big-M is needed), and ``sum of s <= 1`` per point.
Maximise the number of broken points. The objective is integral, so HiGHS may stop once the gap
is below 1; the certified count uses floor(dual bound), never the incumbent.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib import appsi
from pyomo.core.expr.numeric_expr import LinearExpression

from pcert.errors import ResourceError

from .adversary import AttackInstance
from .enumerate import member_groups


@dataclass
class MilpSolution:
    status: str
    incumbent: float         # objective of the solver's best attack (conditioned points broken)
    dual_bound: float        # proven upper bound on that number
    allocation: np.ndarray   # [P] per partition, from the incumbent
    time: float
    build_time: float


class _Rows:
    """Linear rows collected as plain lists, turned into one indexed Pyomo constraint."""

    def __init__(self) -> None:
        self.coefs: list[list[float]] = []
        self.vars: list[list] = []
        self.lower: list[float | None] = []
        self.upper: list[float | None] = []

    def add(self, coefs, vars_, lower=None, upper=None) -> None:
        self.coefs.append([float(c) for c in coefs])
        self.vars.append(list(vars_))
        self.lower.append(lower)
        self.upper.append(upper)

    def attach(self, model: pyo.ConcreteModel, name: str) -> None:
        def rule(_m, r):
            expr = LinearExpression(constant=0, linear_coefs=self.coefs[r], linear_vars=self.vars[r])
            return (self.lower[r], expr, self.upper[r])

        setattr(model, name, pyo.Constraint(range(len(self.coefs)), rule=rule))


def _columns(inst: AttackInstance) -> tuple[list[np.ndarray], bool]:
    """Member columns: groups of identical members (DPA/DPA*) or single members (FA)."""
    used = inst.used_members()
    dpa = inst.spread.shape[1] == 1 and inst.spread.shape[0] == inst.num_members
    if not dpa:
        return [np.array([j]) for j in np.nonzero(used)[0]], False
    _, lab = member_groups(inst, used)
    members = np.nonzero(used)[0]
    return [members[lab == g] for g in range(lab.max() + 1)] if len(members) else [], True


def build_model(inst: AttackInstance) -> tuple[pyo.ConcreteModel, dict]:
    """The Pyomo model and the index maps needed to read an allocation back."""
    K, m_all = inst.K, inst.num_members
    cols, dpa = _columns(inst)
    touch = bool(inst.row_touch.any())
    levels = []
    for members in cols:
        r = inst.R[:, members[0]]
        lv = set(r[r < K].tolist()) | ({0} if touch else set())
        levels.append(sorted(lv))
    var_of = {}                                               # (column, level) -> y index
    ub = []
    for c, lv in enumerate(levels):
        for r in lv:
            var_of[(c, r)] = len(ub)
            ub.append(len(cols[c]))
    col_of = np.full(m_all, -1)
    for c, members in enumerate(cols):
        col_of[members] = c
    model = pyo.ConcreteModel()
    model.y = pyo.Var(range(len(ub)), domain=pyo.NonNegativeIntegers, bounds=lambda _m, i: (0, ub[i]))
    model.s = pyo.Var(range(len(inst.target_point)), domain=pyo.Binary)
    model.sp = pyo.Var(range(len(inst.pair_point)), domain=pyo.Binary)
    model.q = pyo.Var(range(len(inst.pair_point)), range(2), domain=pyo.NonNegativeReals)
    y, s, sp, q = model.y, model.s, model.sp, model.q
    rows = _Rows()
    budget_c, budget_v = [], []
    for c, lv in enumerate(levels):
        prev = -1
        for a, b in zip(lv, lv[1:]):
            rows.add([1, -1], [y[var_of[(c, a)]], y[var_of[(c, b)]]], lower=0)
        if dpa:
            for r in lv:
                budget_c.append(r - prev)
                budget_v.append(y[var_of[(c, r)]])
                prev = r
    parts = []
    if not dpa:
        inc = inst.incidence()
        parts = sorted({int(t) for members in cols for t in np.nonzero(inc[:, members[0]])[0]})
        binary = all(lv == [0] for lv in levels)
        model.a = pyo.Var(range(len(parts)), domain=pyo.Binary if binary else pyo.NonNegativeIntegers,
                          bounds=(0, 1 if binary else K))
        part_idx = {t: i for i, t in enumerate(parts)}
        for c, lv in enumerate(levels):
            feeds = [model.a[part_idx[int(t)]] for t in np.nonzero(inc[:, cols[c][0]])[0]]
            for r in lv:
                rows.add([r + 1] + [-1] * len(feeds), [y[var_of[(c, r)]]] + feeds, upper=0)
        budget_c, budget_v = [1] * len(parts), [model.a[i] for i in range(len(parts))]
    rows.add(budget_c, budget_v, upper=K)

    def ctrl_vars(k: int, weights: np.ndarray, touch_row: bool):
        """Merge member weights into column terms at point k."""
        acc: dict[int, int] = {}
        for j in np.nonzero(weights)[0]:
            c = col_of[j]
            if c < 0 or j != cols[c][0]:                    # identical members: one term per column
                continue
            r = 0 if touch_row else int(inst.R[k, j])
            if (c, r) in var_of:
                idx = var_of[(c, r)]
                acc[idx] = acc.get(idx, 0) + int(round(float(weights[j])))
        return list(acc.values()), [y[i] for i in acc]

    for r in range(len(inst.row_rhs)):
        rhs = int(inst.row_rhs[r])
        if rhs <= 0:
            continue
        t = int(inst.row_target[r])
        k = int(inst.target_point[t])
        coefs, vars_ = ctrl_vars(k, inst.row_w[r], bool(inst.row_touch[r]))
        rows.add(coefs + [-rhs], vars_ + [s[t]], lower=0)
        top = max(coefs, default=0)
        if top > 1 and rhs > top:
            # Chvatal-Gomory rounding (y integer, s binary): enough members must flip
            rows.add([-(-c // top) for c in coefs] + [-(-rhs // top)], vars_ + [s[t]], lower=0)
        if dpa and inst.r_free and top == 2 and rhs > K:
            # a flips worth 2 and b worth 1 with 2a + b >= rhs and a + b <= K force a >= rhs - K
            twos = [v for c, v in zip(coefs, vars_) if c == 2]
            rows.add([1] * len(twos) + [-(rhs - K)], twos + [s[t]], lower=0)
    for p in range(len(inst.pair_point)):
        k = int(inst.pair_point[p])
        for side in range(2):
            coefs, vars_ = ctrl_vars(k, inst.pair_u[p, side], False)
            rows.add([1] + [-c for c in coefs] + [-int(inst.pair_g[p, side])], [q[p, side]] + vars_ + [sp[p]], lower=0)
        able = (inst.R[k] < K).astype(np.float32)
        coefs, vars_ = ctrl_vars(k, able, False)
        rows.add([1, 1] + [-c for c in coefs], [q[p, 0], q[p, 1]] + vars_, upper=0)
    per_point: dict[int, list] = {}
    for t, k in enumerate(inst.target_point):
        per_point.setdefault(int(k), []).append(s[t])
    for p, k in enumerate(inst.pair_point):
        per_point.setdefault(int(k), []).append(sp[p])
    for vars_ in per_point.values():
        if len(vars_) > 1:
            rows.add([1] * len(vars_), vars_, upper=1)
    rows.attach(model, "rows")
    model.obj = pyo.Objective(expr=pyo.quicksum(list(s.values()) + list(sp.values())), sense=pyo.maximize)
    return model, {"cols": cols, "levels": levels, "var_of": var_of, "dpa": dpa, "parts": parts}


def _allocation(inst: AttackInstance, model: pyo.ConcreteModel, maps: dict) -> np.ndarray:
    alloc = np.zeros(inst.spread.shape[0], dtype=np.int64)
    if not maps["dpa"]:
        for i, t in enumerate(maps["parts"]):
            alloc[t] = int(round(pyo.value(model.a[i]) or 0))
        return alloc
    for c, lv in enumerate(maps["levels"]):
        counts = [int(round(pyo.value(model.y[maps["var_of"][(c, r)]]) or 0)) for r in lv]
        members = maps["cols"][c]
        for r, n_at_least in zip(lv, counts):                # members[:n] reach level >= r + 1
            alloc[members[:n_at_least]] = r + 1
    return alloc


def solve_milp(inst: AttackInstance, time_limit: float | None = None, mps_path: str | None = None,
               threads: int = 1) -> MilpSolution:
    """Solve to proven optimality (or the time limit) with HiGHS through Pyomo's APPSI interface."""
    t0 = time.perf_counter()
    model, maps = build_model(inst)
    build = time.perf_counter() - t0
    if mps_path is not None:
        os.makedirs(os.path.dirname(mps_path) or ".", exist_ok=True)
        model.write(mps_path, format="mps")
    solver = appsi.solvers.Highs()
    if not solver.available():
        raise ResourceError("the HiGHS solver (highspy) is not available")
    solver.config.load_solution = False
    solver.config.stream_solver = False
    if time_limit is not None:
        solver.config.time_limit = float(time_limit)
    solver.highs_options = {"threads": threads, "mip_rel_gap": 0.0, "mip_abs_gap": 0.999, "random_seed": 0}
    t1 = time.perf_counter()
    res = solver.solve(model)
    elapsed = time.perf_counter() - t1
    tc = res.termination_condition
    status = {appsi.base.TerminationCondition.optimal: "optimal",
              appsi.base.TerminationCondition.maxTimeLimit: "time_limit"}.get(tc, tc.name)
    bound = res.best_objective_bound
    n_alt = len(inst.points)
    if bound is None or not np.isfinite(bound):
        bound = float(n_alt)                                 # trivial sound bound
    incumbent = res.best_feasible_objective
    alloc = np.zeros(inst.spread.shape[0], dtype=np.int64)
    if incumbent is not None and np.isfinite(incumbent):
        res.solution_loader.load_vars()
        alloc = _allocation(inst, model, maps)
    else:
        incumbent = 0.0
    return MilpSolution(status, float(incumbent), float(min(bound, n_alt)), alloc, elapsed, build)
