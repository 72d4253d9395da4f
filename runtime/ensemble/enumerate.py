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
"""
from __future__ import annotations

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

