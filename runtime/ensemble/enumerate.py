"""Exact multi-sample certificate by enumerating every useful poisoning, vectorised and chunked.

Three exact search spaces, chosen from the instance:

* DPA/DPA* with R = 0 at the conditioned points: one poisoned point per member suffices and
  identical members (same column in every condition) are interchangeable, so the adversary picks
  how many members of each group to poison: all count vectors with total min(K, #members).
* DPA/DPA* with R > 0: per member, only the levels 0 and R[i, j] + 1 (< = K) matter; all level
  vectors with total <= K.
* FA: allocations over partitions (subsets of size min(K, P) when R = 0, else all compositions
  of K), mapped to members by the spread map.

Poisoning more never hurts the adversary (a controlled member may keep its vote), which is why the
"exactly K" spaces are complete.

For DPA/DPA* with R = 0 and no ROE pair conditions, ``solve_branch_bound`` searches the same space
(sets of min(K, #members) poisoned members) depth first with pruning: every condition is a knapsack
``w . x >= rhs`` with w >= 0, so a partial set can only break the points whose rows can still reach
their thresholds with the largest weights left; a subtree whose count of such points is not above
the best attack found is skipped. The count at a leaf is exact, so the search is exact, and the
count over the open subtrees is a proven bound when it stops at a time limit.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .adversary import AttackInstance, broken_points, controlled

_WORK_PER_CHUNK = 2e7


@dataclass
class Space:
    """Units with allowed levels; ``to_members`` maps a batch of level vectors to member columns."""

    levels: list[np.ndarray]     # per unit: sorted allowed levels, starting at 0
    exact: bool                  # total == budget (else <= budget)
    budget: int
    mode: str                    # "groups" | "levels" | "partitions"
    units: np.ndarray            # [U, M]: level vector @ units = effective member allocation (groups:
                                 # the group's count sits on its representative, columns are identical)
    ids: np.ndarray              # [U]: partition index of each unit (levels, partitions; DPA: = member)
    groups: list[np.ndarray] | None = None   # groups: the identical members of each unit

    def count(self) -> float:
        return float(_counts(self.levels, self.budget, self.exact)[0][self.budget])


def _counts(levels: list[np.ndarray], budget: int, exact: bool) -> list[list[float]]:
    """cnt[u][b]: number of completions of units u.. with cost b (exact) or <= b."""
    u_n = len(levels)
    cnt = [[0.0] * (budget + 1) for _ in range(u_n + 1)]
    cnt[u_n] = [1.0 if (b == 0 or not exact) else 0.0 for b in range(budget + 1)]
    for u in range(u_n - 1, -1, -1):
        for b in range(budget + 1):
            cnt[u][b] = sum(cnt[u + 1][b - int(lv)] for lv in levels[u] if lv <= b)
    return cnt


def level_vectors(levels: list[np.ndarray], budget: int, exact: bool, chunk: int) -> Iterator[np.ndarray]:
    """All level vectors (one level per unit, total cost == or <= budget), in blocks of <= ~chunk rows."""
    cnt = _counts(levels, budget, exact)
    u_n = len(levels)
    memo: dict[tuple[int, int], np.ndarray] = {}

    def full(u: int, b: int) -> np.ndarray:
        key = (u, b)
        if key not in memo:
            if u == u_n:
                memo[key] = np.zeros((int(cnt[u][b]), 0), dtype=np.int16)
            else:
                parts = [np.hstack([np.full((int(cnt[u + 1][b - lv]), 1), lv, dtype=np.int16), full(u + 1, b - lv)])
                         for lv in (int(x) for x in levels[u]) if lv <= b and cnt[u + 1][b - lv] > 0]
                memo[key] = np.vstack(parts) if parts else np.zeros((0, u_n - u), dtype=np.int16)
        return memo[key]

    def walk(u: int, b: int, prefix: list[int]) -> Iterator[np.ndarray]:
        if cnt[u][b] <= chunk:
            rest = full(u, b)
            if len(rest):
                yield np.hstack([np.broadcast_to(np.array(prefix, dtype=np.int16), (len(rest), len(prefix))), rest])
            return
        for lv in (int(x) for x in levels[u]):
            if lv <= b and cnt[u + 1][b - lv] > 0:
                yield from walk(u + 1, b - lv, prefix + [lv])
        if len(memo) > 4096:
            memo.clear()

    if cnt[0][budget] > 0:
        yield from walk(0, budget, [])


def member_groups(inst: AttackInstance, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identical used members (same column in every condition and same R): (representatives, labels)."""
    cols = [inst.row_w.T, inst.R.T.astype(np.float32)]
    if len(inst.pair_point):
        cols.append(inst.pair_u.transpose(2, 0, 1).reshape(inst.num_members, -1))
    sig = np.hstack(cols)[used]
    _, rep, lab = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    return np.nonzero(used)[0][rep], lab.reshape(-1)


def search_space(inst: AttackInstance) -> Space:
    """The smallest exact search space for this instance."""
    K = inst.K
    used = inst.used_members()
    m = inst.num_members
    if not used.any():
        return Space([], True, 0, "levels", np.zeros((0, m), dtype=np.float32), np.zeros(0, dtype=np.int64))
    if inst.spread.shape[1] == 1 and inst.spread.shape[0] == m:
        members = np.nonzero(used)[0]
        if inst.r_free:
            reps, lab = member_groups(inst, used)
            sizes = np.bincount(lab, minlength=len(reps))
            units = np.eye(m, dtype=np.float32)[reps]       # a group's count sits on its representative
            levels = [np.arange(min(int(s), K) + 1) for s in sizes]
            groups = [members[lab == g] for g in range(len(reps))]
            return Space(levels, True, min(K, int(sizes.sum())), "groups", units, reps, groups)
        first = [0, 1] if inst.row_touch.any() else [0]          # ROE: poisoned but not controlled
        levels = [np.unique(np.r_[first, inst.R[:, j][inst.R[:, j] < K] + 1]) for j in members]
        units = np.eye(m, dtype=np.float32)[members]
        return Space(levels, False, K, "levels", units, members)
    inc = inst.incidence()
    parts = np.nonzero((inc[:, used] > 0).any(axis=1))[0]
    top = 1 if inst.r_free else K
    return Space([np.arange(top + 1)] * len(parts), True, min(K, len(parts) * top), "partitions", inc[parts], parts)


def work_per_vector(inst: AttackInstance, space: Space) -> float:
    """Multiply-adds per evaluated vector, to size chunks and to estimate run time."""
    m = int(space.units.any(axis=0).sum())                       # member columns evaluated
    per = m * (len(inst.row_rhs) + 3 * len(inst.pair_point)) + m * len(space.levels)
    return float(per if inst.r_free else per + m * len(inst.points))


def solve_enumerate(inst: AttackInstance) -> tuple[int, np.ndarray, Space]:
    """Exact maximum: (broken conditioned points, best level vector, the search space)."""
    space = search_space(inst)
    cols = np.flatnonzero(space.units.any(axis=0))               # members any unit can reach
    sub, units = inst.restrict(cols), space.units[:, cols]
    chunk = max(64, int(_WORK_PER_CHUNK // max(work_per_vector(sub, space), 1.0)))
    best, best_vec = -1, np.zeros(len(space.levels), dtype=np.int16)
    with threadpool_limits(1, user_api="blas"):          # small matmuls: BLAS threads only cost time
        for block in level_vectors(space.levels, space.budget, space.exact, chunk):
            best, best_vec = _best_in(sub, space, units, block, best, best_vec)
            if best == len(inst.points):
                break
    return max(best, 0), best_vec, space


def _best_in(sub: AttackInstance, space: Space, units: np.ndarray, block: np.ndarray, best: int,
             best_vec: np.ndarray) -> tuple[int, np.ndarray]:
    """The better of (best, best_vec) and the best vector of one block."""
    eff = block.astype(np.float32) @ units
    if space.mode == "groups":
        ctrl = touched = eff                           # counts of identical members
    else:
        ctrl, touched = controlled(sub, eff)
    broken = broken_points(sub, ctrl, touched).sum(axis=1)
    i = int(np.argmax(broken))
    if broken[i] > best:
        return int(broken[i]), block[i].copy()
    return best, best_vec


def partition_allocation(inst: AttackInstance, space: Space, vec: np.ndarray) -> np.ndarray:
    """A best level vector -> allocation per partition [P] (integers summing to <= K)."""
    alloc = np.zeros(inst.spread.shape[0], dtype=np.int64)
    if space.mode == "groups":
        for g, count in enumerate(vec):
            alloc[space.groups[g][: int(count)]] = 1        # DPA: partition j = member j
    else:
        alloc[space.ids] = vec
    return alloc


def enumeration_size(inst: AttackInstance) -> tuple[float, float]:
    """(number of vectors, estimated multiply-adds) of the exact enumeration."""
    space = search_space(inst)
    n = space.count()
    return n, n * work_per_vector(inst, space)


# ----------------------------------------------------------------------------- branch and bound
_BB_STEP = 2 ** 23           # (child x row) tests per expansion step: ~8 MB per bool array
_BB_MAX_TABLE = 2e7          # threshold-table entries (picks x members x rows); also caps a local-search step
_LS_WORK = 2e9               # row tests the local search may spend
_LS_RESTARTS = 200           # measured: 100-200 random restarts find the optimum of the CIFAR-like B=400 K=10 case


@dataclass
class SubsetResult:
    """Outcome of the branch-and-bound over poisoned member sets."""

    broken: int              # conditioned points broken by ``members``
    bound: int               # proven upper bound on that number (== broken when complete)
    members: np.ndarray      # poisoned members (one poisoned point each) of the best attack found
    complete: bool           # False: stopped at the time limit; ``bound`` covers the open subtrees


@dataclass
class _Subsets:
    """The conditions as integer rows over the used members, identical members adjacent. The rows of
    points with a single one-row target come first: they are counted without grouping (fast)."""

    w: np.ndarray            # [m, rows] row weights of each member column (smallest int type that fits)
    rhs: np.ndarray          # [rows]
    members: np.ndarray      # [m] member of each column
    first: np.ndarray        # [m] bool: column differs from the previous one
    picks: int               # min(K, m): poisoning more never hurts, so every leaf has this many
    points: int              # conditioned points: no attack breaks more
    alone: int               # leading rows that are a point's only condition
    target_starts: np.ndarray    # the other rows: where each target starts (offsets after ``alone``)
    point_starts: np.ndarray     # and where each point starts among those targets

    def broken(self, ok: np.ndarray) -> np.ndarray:
        """[..., rows] row tests -> [...] number of points with a target whose rows all hold."""
        count = np.count_nonzero(ok[..., :self.alone], axis=-1)
        if self.alone == ok.shape[-1]:
            return count
        rest = np.logical_and.reduceat(ok[..., self.alone:], self.target_starts, axis=-1)
        return count + np.count_nonzero(np.logical_or.reduceat(rest, self.point_starts, axis=-1), axis=-1)


def branch_bound_applies(inst: AttackInstance) -> bool:
    """DPA/DPA* with R = 0 at the conditioned points and no ROE pair conditions: an attack is then a
    set of poisoned members and every condition a knapsack over it. Also bounds the table size."""
    m = inst.num_members
    if inst.spread.shape != (m, 1) or not inst.r_free or len(inst.pair_point) or not len(inst.row_rhs):
        return False
    used = int(inst.used_members().sum())
    picks = min(inst.K, used)
    return picks >= 1 and picks * used * len(inst.row_rhs) <= _BB_MAX_TABLE


def _subsets(inst: AttackInstance) -> _Subsets:
    used = inst.used_members()
    _, lab = member_groups(inst, used)
    order = np.argsort(lab, kind="stable")
    members, lab = np.nonzero(used)[0][order], lab[order]
    rt, tp = inst.row_target, inst.target_point
    alone = (np.bincount(rt, minlength=len(tp))[rt] == 1) & (np.bincount(tp)[tp[rt]] == 1)
    rows = np.r_[np.flatnonzero(alone), np.flatnonzero(~alone)]       # keeps the other rows grouped
    rest = rt[~alone]
    t_starts = np.flatnonzero(np.r_[True, rest[1:] != rest[:-1]])
    pts = tp[rest[t_starts]] if len(rest) else rest
    picks = min(inst.K, len(members))
    span = int(np.abs(inst.row_rhs).max()) + 2 * picks + 2     # bounds loads (weights <= 2) and thresholds
    dtype = next(t for t in (np.int8, np.int16, np.int32) if span < np.iinfo(t).max)
    return _Subsets(w=np.ascontiguousarray(np.rint(inst.row_w[rows][:, members].T)).astype(dtype),
                    rhs=inst.row_rhs[rows].astype(dtype), members=members, first=np.r_[True, lab[1:] != lab[:-1]],
                    picks=picks, points=len(np.unique(tp)), alone=int(alone.sum()),
                    target_starts=t_starts, point_starts=np.flatnonzero(np.r_[True, pts[1:] != pts[:-1]]))


def _thresholds(prob: _Subsets) -> np.ndarray:
    """thr[r - 1, j]: after picking column j with r - 1 picks left (from the columns after j) a row
    can still hold iff the node's load >= thr = rhs - w_j - (sum of the r - 1 largest later weights)."""
    m, rows = prob.w.shape
    thr = np.empty((prob.picks, m, rows), dtype=prob.w.dtype)
    top = np.zeros((rows, prob.picks - 1), dtype=np.int32)  # largest later weights, sorted; 0-padded (w >= 0)
    for j in range(m - 1, -1, -1):
        later = np.hstack([np.zeros((rows, 1), dtype=np.int32), np.cumsum(top, axis=1)])
        thr[:, j] = (prob.rhs - prob.w[j])[None] - later.T
        top = -np.sort(-np.hstack([top, prob.w[j][:, None]]), axis=1)[:, :prob.picks - 1]
    return thr


def _local_search(prob: _Subsets, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Best 1-swap local optimum over random starting sets: an incumbent that makes pruning bite early."""
    m, n = prob.w.shape[0], prob.picks
    per_round = max(n * (m - n) * prob.w.shape[1], 1)
    restarts = min(_LS_WORK / (10 * per_round), _LS_RESTARTS, math.comb(m, n) // 1000 + 1)   # small: search is cheap
    best, best_set = -1, np.arange(n)
    for _ in range(max(int(restarts), 1)):
        if best == prob.points:
            break
        chosen = np.sort(rng.choice(m, n, replace=False))
        load = prob.w[chosen].sum(axis=0, dtype=prob.w.dtype)
        value = int(prob.broken(load >= prob.rhs))
        while n < m:
            out = np.setdiff1d(np.arange(m), chosen)
            cand = load[None, None] - prob.w[chosen][:, None] + prob.w[out][None]     # [n, m - n, rows]
            vals = prob.broken(cand >= prob.rhs)
            p, q = np.unravel_index(int(np.argmax(vals)), vals.shape)
            if vals[p, q] <= value:
                break
            chosen[p], load, value = out[q], cand[p, q], int(vals[p, q])
        if value > best:
            best, best_set = value, np.sort(chosen)
    return best, best_set


@dataclass
class _Batch:
    """Search nodes with the same number of picks made: row loads, next free column, picks so far."""

    loads: np.ndarray        # [n, rows]
    nxt: np.ndarray          # [n] first column a child may pick
    paths: np.ndarray        # [n, depth] columns picked
    bound: int               # no node of the batch can break more points

    def split(self) -> tuple["_Batch", "_Batch"]:
        h = len(self.nxt) // 2
        return (_Batch(self.loads[:h], self.nxt[:h], self.paths[:h], self.bound),
                _Batch(self.loads[h:], self.nxt[h:], self.paths[h:], self.bound))


def _children(prob: _Subsets, thr: np.ndarray, batch: _Batch, left: int) -> tuple[np.ndarray, ...]:
    """(node, column, bound) of every child. Columns stop at m - left so that every path reaches
    ``picks`` members; among identical columns a child skips none (it takes the first free one)."""
    m = prob.w.shape[0]
    cnt = np.maximum(m - left + 1 - batch.nxt, 0)
    node = np.repeat(np.arange(len(cnt)), cnt)
    col = batch.nxt[node] + np.arange(len(node)) - (np.cumsum(cnt) - cnt)[node]
    keep = (col == batch.nxt[node]) | prob.first[col]
    node, col = node[keep], col[keep]
    return node, col, prob.broken(batch.loads[node] >= thr[left - 1][col])


def solve_branch_bound(inst: AttackInstance, time_limit: float | None = None) -> SubsetResult:
    """Exact maximum over sets of min(K, #members) poisoned members (``branch_bound_applies``)."""
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    prob = _subsets(inst)
    points, (m, rows) = prob.points, prob.w.shape
    with threadpool_limits(1, user_api="blas"):
        best, best_set = _local_search(prob, np.random.default_rng(0))
        thr = _thresholds(prob)
        stack = [_Batch(np.zeros((1, rows), dtype=prob.w.dtype), np.zeros(1, dtype=np.int64),
                        np.zeros((1, 0), dtype=np.int64), points)]
        while stack and best < points and (deadline is None or time.perf_counter() < deadline):
            batch = stack.pop()
            left = prob.picks - batch.paths.shape[1]
            if int(np.maximum(m - left + 1 - batch.nxt, 0).sum()) * rows > _BB_STEP and len(batch.nxt) > 1:
                stack.extend(reversed(batch.split()))
                continue
            node, col, bound = _children(prob, thr, batch, left)
            if left == 1:                                   # leaves: the bound is the exact count
                i = int(np.argmax(bound)) if len(bound) else 0
                if len(bound) and bound[i] > best:
                    best, best_set = int(bound[i]), np.r_[batch.paths[node[i]], col[i]]
                continue
            keep = bound > best
            if keep.any():
                node, col = node[keep], col[keep]
                stack.append(_Batch(batch.loads[node] + prob.w[col], col + 1,
                                    np.hstack([batch.paths[node], col[:, None]]), int(bound[keep].max())))
    complete = not stack or best >= points
    bound = best if complete else max([best] + [b.bound for b in stack])
    return SubsetResult(best, bound, prob.members[best_set], complete)
