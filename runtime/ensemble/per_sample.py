"""Published per-sample certificates: the baselines that multi-sample certificates are compared with.

Each returns, per test point, the certified radius: the largest number K of poisoned training
points (insertions, deletions or changes: |D symmetric-difference T(D)| <= K) under which the
ensemble prediction provably stays the same; -1 where the prediction is wrong.

* DPA (Levine & Feizi 2021): floor((v_c - max_{c' != c}(v_c' + 1[c' < c])) / 2).
* FA (Wang et al. 2022, as in the thesis sec. 3.2.1): the largest k such that for every c' the
  sum of the k largest Delta_t = sum_{j in spread(t)} (1 + 1[f_j = c] - 1[f_j = c']) is at most
  the margin v_c - v_c' - 1[c' < c].
* ROE (Rezaei et al., ICML 2023; thesis sec. 3.2.1 and 4.2.1): min(Cert_R1, Cert_R2) - 1 with
  Cert_R1 = min over pairs {c1, c2} not containing c_pred of Cert_V2 (both overtake c_pred in
  round 1) and Cert_R2 = min_{c != c_pred} max(Cert_V1(c_sec, c), Cert_V1^logits(c_pred, c)),
  c_sec being the other finalist.
  - DPA/DPA*: Cert_V2 = dp[gap1, gap2] (the published table, gaps clipped at 0), Cert_V1 =
    ceil(gap / 2) in both rounds.
  - FA: every Cert_V1 is the fewest partitions whose largest Delta's close the gap (Delta as in FA;
    in round 2 a member weighs 2 if it prefers c_pred, 1 if indifferent, 0 if it prefers c), and
    Cert_V2 = max(n1, n2, n_sum): n1, n2 the single-class costs, n_sum the fewest partitions
    closing gap1 + gap2 (unclipped) with per-member weight 1 + 2*1[f_j = c_pred] - 1[f_j = c1] -
    1[f_j = c2]. This is the authors' FA+ROE bound (github.com/k1rezaei/DPA-election,
    ``fa_roe_certify.py``): each of the three is necessary, so it is a lower bound, not exact.

Round 2 follows ``voting.py``: strict preferences, an indifferent member votes for neither. The
authors' code counts ``2 * #prefer - M``, which equals ``#prefer - #prefer_other`` whenever no
member has equal scores; with equal scores the rule here is the one the paper's formula states.

Gaps follow one rule: class b overtakes class a iff ``gap(a, b) = v_a - v_b + 1[b > a] <= 0``.
"""
from __future__ import annotations

import numpy as np

from .outputs import MemberOutputs
from .voting import roe, round_two_counts, top_two, vote_counts

_INF = np.iinfo(np.int64).max // 4
_CHUNK = 1 << 22     # entries per chunk of the FA+ROE pair costs


def dpa_certificate(ens: MemberOutputs, labels: np.ndarray) -> np.ndarray:
    """Levine & Feizi's DPA certificate per test point (-1 where wrong)."""
    counts = vote_counts(ens.votes, ens.num_classes)
    pred = np.argmax(counts, axis=1)
    c = np.arange(ens.num_classes)
    rival = counts + (c[None, :] < pred[:, None])
    rival[np.arange(len(pred)), pred] = -_INF
    cert = (counts[np.arange(len(pred)), pred] - rival.max(axis=1)) // 2
    return np.where(pred == labels, cert, -1)


def _gaps(counts: np.ndarray, a: np.ndarray) -> np.ndarray:
    """gap(a[i], b) for every class b: [N, C]; b overtakes a[i] iff the gap is <= 0."""
    c = np.arange(counts.shape[1])
    va = counts[np.arange(len(a)), a]
    return va[:, None] - counts + (c[None, :] > a[:, None])


def _fewest(delta: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Fewest entries of ``delta`` (last axis, all >= 0) whose largest sum reaches ``gap``.

    0 where gap <= 0; _INF where even all entries fall short. Needs delta >= 0 so that the prefix
    sums of the sorted entries never decrease.
    """
    prefix = np.cumsum(-np.sort(-delta, axis=-1), axis=-1)          # largest first
    short = (prefix < gap[..., None]).sum(axis=-1) + (gap > 0)      # k = 0 counts when gap > 0
    return np.where(short > delta.shape[-1], _INF, short)


def _partition_costs(member_weights: np.ndarray, spread: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Fewest partitions whose largest Delta's reach ``gap``: [N, C] (0 if gap <= 0, _INF if never).

    member_weights [N, M, C]: how much member j narrows the gap towards class c when it flips.
    """
    delta = member_weights[:, spread, :].sum(axis=2)          # [N, P, C]
    return _fewest(np.moveaxis(delta, 1, -1), gap)


def _flip_weights(votes: np.ndarray, a: np.ndarray, num_classes: int) -> np.ndarray:
    """Weight of member j towards class c when it flips at point i: 2 if it votes a[i], 0 if it
    already votes c, else 1. [N, M, C]."""
    c = np.arange(num_classes)
    return 1 + (votes == a[:, None])[..., None] - (votes[..., None] == c)


def fa_certificate(ens: MemberOutputs, labels: np.ndarray) -> np.ndarray:
    """Wang et al.'s Finite Aggregation certificate per test point (-1 where wrong)."""
    counts = vote_counts(ens.votes, ens.num_classes)
    pred = np.argmax(counts, axis=1)
    cost = _partition_costs(_flip_weights(ens.votes, pred, ens.num_classes), ens.spread, _gaps(counts, pred))
    cost[np.arange(len(pred)), pred] = _INF
    return np.where(pred == labels, cost.min(axis=1) - 1, -1)


def _roe_dp(size: int) -> np.ndarray:
    """Rezaei et al.'s table: fewest flips making both round-1 gaps <= 0 (gaps clipped at 0)."""
    i = np.arange(size)
    dp = -(-np.maximum(i[:, None], i[None, :]) // 2)          # ceil(max / 2), the base case
    for r in range(2, size):
        dp[r, 2:] = 1 + np.minimum(dp[r - 1, :-2], dp[r - 2, 1:-1])
    return dp


def _round_two_gap(scores: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Round-2 gap between pred and every class c (strict preferences): [N, C]."""
    n, _, c = scores.shape
    cls = np.arange(c)
    gap = np.zeros((n, c), dtype=np.int64)
    for k in range(c):
        n_pred, n_k = round_two_counts(scores, pred, np.full(n, k))
        gap[:, k] = n_pred - n_k + (k > pred)
    return np.where(cls[None, :] == pred[:, None], _INF, gap)


def _round_two_weights(scores: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Weight of member j in round 2 (pred against c) when poisoned: 2 prefers pred, 1 tie, 0 prefers c."""
    s_pred = scores[np.arange(len(pred)), :, pred][..., None]
    return (s_pred > scores).astype(np.int64) + (s_pred >= scores)


def _dpa_round_one(counts: np.ndarray, pred: np.ndarray, num_members: int) -> np.ndarray:
    """Cert_R1 for DPA/DPA*: min over pairs {c1, c2} of dp[gap1, gap2] (gaps clipped at 0): [N]."""
    n, c = counts.shape
    others = np.arange(c)[None, :] != pred[:, None]
    cap = num_members + 2
    g = np.minimum(np.where(others, np.maximum(_gaps(counts, pred), 0), cap), cap)
    pair = _roe_dp(cap + 1)[g[:, :, None], g[:, None, :]]
    valid = others[:, :, None] & others[:, None, :] & ~np.eye(c, dtype=bool)[None]
    return np.where(valid, pair, _INF).reshape(n, -1).min(axis=1)


def _pair_sum_costs(votes: np.ndarray, spread: np.ndarray, pred: np.ndarray, c1: np.ndarray,
                    c2: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """n_sum per (row, c1, c2) triple: fewest partitions closing gap1 + gap2 together: [T].

    A member moved from c_pred to c1 narrows gap1 by 2 and gap2 by 1, one moved from a third class
    narrows the sum by 1, one voting c1 or c2 cannot narrow it: weight 1 + 2*1[pred] - 1[c1] - 1[c2]
    (never negative). Chunked over triples so that memory stays at about _CHUNK entries.
    """
    out = np.empty(len(gap), dtype=np.int64)
    step = max(1, _CHUNK // max(1, votes.shape[1] * spread.shape[1]))
    for s in range(0, len(gap), step):
        v = votes[s:s + step]
        w = 1 + 2 * (v == pred[s:s + step, None]) - (v == c1[s:s + step, None]) - (v == c2[s:s + step, None])
        out[s:s + step] = _fewest(w[:, spread].sum(axis=2), gap[s:s + step])
    return out


def _fa_round_one(ens: MemberOutputs, counts: np.ndarray, pred: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Cert_R1 for FA (Rezaei et al.): min over pairs {c1, c2} of max(n1, n2, n_sum): [N].

    Pairs whose max(n1, n2) is already >= ``limit`` (the point's Cert_R2) cannot lower
    min(Cert_R1, Cert_R2), so their n_sum is not computed; such points may get _INF here.
    """
    n, c = counts.shape
    # Unclipped, as published: with gap1 < 0 (c1 already above c_pred) moving c1-voters to c2 still
    # helps, so requiring the sum to close max(gap1, 0) + gap2 would not be a necessary condition.
    gap = _gaps(counts, pred)
    single = _partition_costs(_flip_weights(ens.votes, pred, c), ens.spread, np.maximum(gap, 0))
    single[np.arange(n), pred] = _INF
    both = np.maximum(single[:, :, None], single[:, None, :])         # [N, C, C]
    upper = np.triu(np.ones((c, c), dtype=bool), k=1)[None]
    rows, c1, c2 = np.nonzero(upper & (both < limit[:, None, None]))
    cert = np.full(n, _INF, dtype=np.int64)
    if rows.size:
        n_sum = _pair_sum_costs(ens.votes[rows], ens.spread, pred[rows], c1, c2,
                                gap[rows, c1] + gap[rows, c2])
        np.minimum.at(cert, rows, np.maximum(both[rows, c1, c2], n_sum))
    return cert


def roe_certificate(ens: MemberOutputs, labels: np.ndarray) -> np.ndarray:
    """Rezaei et al.'s Run-Off Election certificate per test point (-1 where wrong); needs member
    scores. DPA+ROE for ``dpa``/``dpa_star``, FA+ROE for ``fa`` (see the module docstring)."""
    scores = ens.scores
    if scores is None:
        raise ValueError("run-off election certificates need member scores")
    c = scores.shape[2]
    counts = vote_counts(ens.votes, c)
    pred = roe(scores)
    c1, c2 = top_two(counts)
    sec = np.where(c1 == pred, c2, c1)
    others = np.arange(c)[None, :] != pred[:, None]
    gap_sec = np.maximum(_gaps(counts, sec), 0)                       # c overtaking the other finalist
    gap2 = np.where(others, np.maximum(_round_two_gap(scores, pred), 0), 0)
    if ens.scheme == "fa":
        v1 = _partition_costs(_flip_weights(ens.votes, sec, c), ens.spread, gap_sec)
        v1_logits = _partition_costs(_round_two_weights(scores, pred), ens.spread, gap2)
    else:
        v1 = -(-gap_sec // 2)
        v1_logits = -(-gap2 // 2)
    cert_r2 = np.where(others, np.maximum(v1, v1_logits), _INF).min(axis=1)
    if ens.scheme == "fa":
        cert_r1 = _fa_round_one(ens, counts, pred, cert_r2)
    else:
        cert_r1 = _dpa_round_one(counts, pred, ens.num_members)
    cert = np.minimum(np.minimum(cert_r1, cert_r2), ens.num_partitions + 1) - 1
    return np.where(pred == labels, cert, -1)


def per_sample_certificate(ens: MemberOutputs, labels: np.ndarray, vote: str = "plurality") -> np.ndarray:
    """The published certificate for the ensemble's scheme and vote."""
    if vote == "roe":
        return roe_certificate(ens, labels)
    if ens.scheme == "fa":
        return fa_certificate(ens, labels)
    return dpa_certificate(ens, labels)

