"""The multi-sample adversary's problem on one batch, reduced to exact linear conditions.

Threat model. The adversary changes at most K training points (|D symmetric-difference T(D)| <= K),
allocating a_t >= 0 of them to partition t. Member j sees the effective allocation
``A_j = sum of a_t over the partitions spread to j`` (FA; DPA/DPA*: its own partition). A member is
*controlled* at test point i when ``A_j > R[i, j]`` (R = intrinsic robustness, 0 when unknown): it
may then output anything there. Otherwise its vote at i is unchanged. A point already wrong counts
as broken. The adversary maximises the number of broken points of the batch.

Plurality, exact. A correctly predicted point i (prediction p) breaks iff for some class c != p,
letting every controlled member vote c makes c beat p (any winner c beats p, and moving every
controlled vote to c only helps c against p). With weights w_j = 2 (votes p), 1 (another class),
0 (already votes c) the condition is ``sum_{controlled j} w_j >= v_p - v_c + 1[c > p]``.

Run-Off Election. A correct point breaks iff one of
 (a) round-1 elimination: for two classes c1, c2 != p, the controlled members can be split
     between c1 and c2 so that both rank above p:
     ``(g1 + F1)^+ + (g2 + F2)^+ <= n`` with g_k = v_p - v_ck + 1[ck > p],
     F_k = #controlled voting c_k - #controlled voting p, n = #controlled;
 (b) run-off win: for a class c != p, with every controlled member voting c, c ranks above every
     class y other than p and c (``sum w_jy >= v_y - v_c + 1[y < c]``, w_jy = 1[v_j != c] +
     1[v_j = y]), and with every poisoned member preferring c in round 2, c beats p there
     (weights 2 prefers p, 1 tie, 0 prefers c; ``>= n2_p - n2_c + 1[c > p]``).
Any successful attack either removes p in round 1 (then (a) holds: moving every controlled vote to
the two classes above p keeps them above p) or meets p in the run-off with some c and wins (then
(b) holds: voting c only raises c and lowers the others). So (a) or (b) is exact when R = 0.
With R > 0 a member that is poisoned (A_j >= 1) but not controlled keeps its vote, yet its
round-2 preference between two classes it does not vote for is not covered by R (R certifies the
arg-max only); the round-2 rows therefore treat every poisoned member as free. This can only help
the adversary: the ROE answer with R > 0 is a relaxation that never over-certifies.

Reductions, each sound: points already wrong, or whose published per-sample certificate is >= K,
get no conditions; members with R[i, j] >= K never flip at i; a condition whose K*d largest
weights cannot reach its threshold is dropped (at most K*d members can be poisoned).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .outputs import MemberOutputs
from .voting import predict, round_two_counts, vote_counts


@dataclass
class AttackInstance:
    """Conditions over member columns. Rows are grouped by target, targets by point.

    A target holds when all its rows hold: ``x . row_w >= row_rhs`` with x the controlled indicator
    at the row's point (or the poisoned indicator for round-2 rows, ``row_touch``). A pair holds
    when ``(g0 + x.u0)^+ + (g1 + x.u1)^+ <= sum(x)``. A point breaks when any of its targets or
    pairs holds.
    """

    size: int                    # batch size B
    K: int
    wrong: np.ndarray            # [B] bool: already wrong
    points: np.ndarray           # [Bk] batch indices of the points with conditions
    R: np.ndarray                # [Bk, M] clipped to K (K means: never controlled)
    spread: np.ndarray           # [P, d]
    row_w: np.ndarray            # [nrows, M] float32
    row_rhs: np.ndarray          # [nrows] int64
    row_target: np.ndarray       # [nrows] int64, sorted
    row_touch: np.ndarray        # [nrows] bool
    target_point: np.ndarray     # [ntargets] index into points, sorted
    pair_point: np.ndarray       # [npairs] index into points
    pair_u: np.ndarray           # [npairs, 2, M] float32
    pair_g: np.ndarray           # [npairs, 2] int64

    @property
    def num_members(self) -> int:
        return self.R.shape[1]

    @property
    def r_free(self) -> bool:
        """True when no member at a conditioned point has intrinsic robustness."""
        return not self.R.any()

    def incidence(self) -> np.ndarray:
        """[P, M] 0/1: partition t feeds member j."""
        inc = np.zeros((self.spread.shape[0], self.num_members), dtype=np.float32)
        inc[np.repeat(np.arange(self.spread.shape[0]), self.spread.shape[1]), self.spread.reshape(-1)] = 1
        return inc

    def restrict(self, members: np.ndarray) -> "AttackInstance":
        """The same conditions over a subset of member columns (for evaluation; DPA spread)."""
        return dataclasses.replace(self, R=self.R[:, members], row_w=self.row_w[:, members],
                                   pair_u=self.pair_u[:, :, members], spread=np.arange(len(members))[:, None])

    def used_members(self) -> np.ndarray:
        """[M] bool: members that appear in some condition."""
        used = (self.row_w != 0).any(axis=0)
        if len(self.pair_point):
            used |= (self.R[self.pair_point] < self.K).any(axis=0)
        return used


def _top_sum(w: np.ndarray, k: int) -> np.ndarray:
    """Sum of the k largest entries along the last axis."""
    k = min(k, w.shape[-1])
    return -np.sort(-w, axis=-1)[..., :k].sum(axis=-1)


def build_instance(ens: MemberOutputs, labels: np.ndarray, K: int, R: np.ndarray, vote: str,
                   safe: np.ndarray | None = None) -> AttackInstance:
    """Conditions for one batch. ``safe`` marks points proven unbreakable (skipped)."""
    c = ens.num_classes
    counts = vote_counts(ens.votes, c)
    pred = predict(ens.votes, ens.scores, c, vote)
    wrong = pred != labels
    keep = ~wrong if safe is None else ~wrong & ~safe
    idx = np.nonzero(keep)[0]
    Rk = np.minimum(R[idx], K)
    able = Rk < K                                                 # [Bk, M] may flip
    reach = K * ens.spread.shape[1]                               # most members poisoned
    votes, v, p = ens.votes[idx], counts[idx], pred[idx]
    cls = np.arange(c)
    # plurality / ROE (b): every controlled member votes the target class t
    w_t = (1 + (votes == p[:, None])[..., None] - (votes[..., None] == cls)) * able[..., None]  # [Bk, M, C]
    gap_t = v[np.arange(len(p)), p][:, None] - v + (cls[None, :] > p[:, None])               # [Bk, C]
    rows, pairs = [], []
    for k in range(len(idx)):
        targets = []
        for t in range(c):
            if t == p[k]:
                continue
            if vote == "plurality":
                if _top_sum(w_t[k, :, t], reach) >= gap_t[k, t]:
                    targets.append([(w_t[k, :, t], gap_t[k, t], False)])
                continue
            cond = []
            for y in range(c):
                rhs = v[k, y] - v[k, t] + (y < t)
                if y in (t, p[k]) or rhs <= 0:
                    continue
                cond.append((((votes[k] != t).astype(np.int64) + (votes[k] == y)) * able[k], rhs, False))
            n_p, n_t = round_two_counts(ens.scores[idx[k]][None], p[k:k + 1], np.array([t]))
            s = ens.scores[idx[k]]
            w2 = (s[:, p[k]] > s[:, t]).astype(np.int64) + (s[:, p[k]] >= s[:, t])
            cond.append((w2, int(n_p[0] - n_t[0] + (t > p[k])), True))
            if all(_top_sum(w, reach) >= r for w, r, _ in cond):
                targets.append(cond)
        rows.extend((k, cond) for cond in targets)
        if vote == "roe":
            n_max = min(int(able[k].sum()), reach)
            for c1 in range(c):
                for c2 in range(c1 + 1, c):
                    if p[k] in (c1, c2):
                        continue
                    g = np.array([gap_t[k, c1], gap_t[k, c2]])
                    if np.maximum(g - n_max, 0).sum() > n_max:
                        continue
                    u = np.stack([(votes[k] == c1), (votes[k] == c2)]).astype(np.int64) - (votes[k] == p[k])
                    pairs.append((k, u * able[k], g))
    # drop points left without any condition
    has = np.zeros(len(idx), dtype=bool)
    has[[k for k, _ in rows]] = True
    has[[k for k, _, _ in pairs]] = True
    remap = np.cumsum(has) - 1
    m = ens.num_members
    flat = [(remap[k], ti, w, r, touch) for ti, (k, cond) in enumerate(rows) for (w, r, touch) in cond]
    return AttackInstance(
        size=len(labels), K=K, wrong=wrong, points=idx[has], R=Rk[has], spread=ens.spread,
        row_w=np.array([f[2] for f in flat], dtype=np.float32).reshape(-1, m),
        row_rhs=np.array([f[3] for f in flat], dtype=np.int64),
        row_target=np.array([f[1] for f in flat], dtype=np.int64),
        row_touch=np.array([f[4] for f in flat], dtype=bool),
        target_point=np.array([remap[k] for k, _ in rows], dtype=np.int64),
        pair_point=np.array([remap[k] for k, _, _ in pairs], dtype=np.int64),
        pair_u=np.array([u for _, u, _ in pairs], dtype=np.float32).reshape(-1, 2, m),
        pair_g=np.array([g for _, _, g in pairs], dtype=np.int64).reshape(-1, 2),
    )


def broken_points(inst: AttackInstance, ctrl: np.ndarray, touched: np.ndarray) -> np.ndarray:
    """[n, Bk] bool: which conditioned points break under n attacks.

    ``ctrl``: [n, M] (when ``inst.r_free``) or [n, Bk, M], the controlled members (0/1, or counts of
    identical members); ``touched``: [n, M] poisoned members (used by round-2 rows).
    """
    n, bk = ctrl.shape[0], len(inst.points)
    out = np.zeros((n, bk), dtype=bool)
    if len(inst.row_target):
        rp = inst.target_point[inst.row_target]
        if ctrl.ndim == 2:
            val = ctrl @ inst.row_w.T
        else:
            val = np.einsum("nrm,rm->nr", ctrl[:, rp, :], inst.row_w)
        if inst.row_touch.any():
            val = np.where(inst.row_touch, touched @ inst.row_w.T, val)
        ok = val >= inst.row_rhs
        starts = np.flatnonzero(np.r_[True, inst.row_target[1:] != inst.row_target[:-1]])
        t_ok = ok if len(starts) == len(ok[0]) else np.logical_and.reduceat(ok, starts, axis=1)  # [n, ntargets]
        pts = inst.target_point
        p_starts = np.flatnonzero(np.r_[True, pts[1:] != pts[:-1]])
        out[:, pts[p_starts]] |= np.logical_or.reduceat(t_ok, p_starts, axis=1)
    if len(inst.pair_point):
        x = ctrl if ctrl.ndim == 2 else None
        if x is None:
            xp = ctrl[:, inst.pair_point, :]                                  # [n, npairs, M]
            f = np.einsum("npm,pkm->npk", xp, inst.pair_u)
            total = xp.sum(axis=2)
        else:
            f = np.einsum("nm,pkm->npk", x, inst.pair_u)
            able = (inst.R[inst.pair_point] < inst.K).astype(np.float32)       # [npairs, M]
            total = x @ able.T
        ok = np.maximum(inst.pair_g + f, 0).sum(axis=2) <= total              # [n, npairs]
        hit = np.zeros((n, bk), dtype=np.int64)
        np.add.at(hit.T, inst.pair_point, ok.T.astype(np.int64))
        out |= hit > 0
    return out


def controlled(inst: AttackInstance, effective: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Effective member allocations [n, M] -> (controlled, poisoned) indicators for broken_points."""
    touched = (effective >= 1).astype(np.float32)
    if inst.r_free:
        return touched, touched
    return (effective[:, None, :] > inst.R[None]).astype(np.float32), touched
