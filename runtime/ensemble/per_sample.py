"""Published per-sample certificates: the baselines that multi-sample certificates are compared with.

Each returns, per test point, the certified radius: the largest number K of poisoned training
points (insertions, deletions or changes: |D symmetric-difference T(D)| <= K) under which the
ensemble prediction provably stays the same; -1 where the prediction is wrong.

* DPA (Levine & Feizi 2021): floor((v_c - max_{c' != c}(v_c' + 1[c' < c])) / 2).
* FA (Wang et al. 2022, as in the thesis sec. 3.2.1): the largest k such that for every c' the
  sum of the k largest Delta_t = sum_{j in spread(t)} (1 + 1[f_j = c] - 1[f_j = c']) is at most
  the margin v_c - v_c' - 1[c' < c].
* ROE (Rezaei et al. 2023, as in the thesis sec. 4.2.1) with DPA/DPA*: min(Cert_R1, Cert_R2) - 1,
  Cert_R1 from the published dynamic programme over the two round-1 gaps, Cert_R2 =
  min_c max(Cert_V1(c_sec, c), Cert_V1^logits(c_pred, c)), where c_sec is the other finalist and
  the round-2 count uses every member's strict score preference.
* ROE with FA: the same two-round structure with every cost replaced by its FA cost (fewest
  poisoned partitions whose largest Delta's close the gap); round-1 elimination uses the larger of
  the two single-class costs instead of the paper's joint programme. Every step is a lower bound on
  the poisoned points needed, so the certificate is sound; it can be looser than Rezaei et al.'s
  FA+ROE.

Gaps follow one rule: class b overtakes class a iff ``gap(a, b) = v_a - v_b + 1[b > a] <= 0``.
"""
from __future__ import annotations

import numpy as np

from .outputs import MemberOutputs
from .voting import roe, round_two_counts, top_two, vote_counts

_INF = np.iinfo(np.int64).max // 4


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


def _partition_costs(member_weights: np.ndarray, spread: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Fewest partitions whose largest Delta's reach ``gap``: [N, C] (0 if gap <= 0, _INF if never).

    member_weights [N, M, C]: how much member j narrows the gap towards class c when it flips.
    """
    delta = member_weights[:, spread, :].sum(axis=2)          # [N, P, C]
    prefix = np.cumsum(-np.sort(-delta, axis=1), axis=1)      # largest first
    prefix = np.concatenate([np.zeros_like(prefix[:, :1]), prefix], axis=1)  # k = 0..P
    cost = (prefix < gap[:, None, :]).sum(axis=1)
    return np.where(cost > spread.shape[0], _INF, cost)


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


def roe_certificate(ens: MemberOutputs, labels: np.ndarray) -> np.ndarray:
    """Run-Off Election certificate per test point (-1 where wrong); needs member scores."""
    scores = ens.scores
    if scores is None:
        raise ValueError("run-off election certificates need member scores")
    n, m, c = scores.shape
    counts = vote_counts(ens.votes, c)
    pred = roe(scores)
    c1, c2 = top_two(counts)
    sec = np.where(c1 == pred, c2, c1)
    rows = np.arange(n)
    gap_pred = np.maximum(_gaps(counts, pred), 0)                 # others overtaking pred
    gap_sec = np.maximum(_gaps(counts, sec), 0)                   # c overtaking the other finalist
    gap2 = np.maximum(_round_two_gap(scores, pred), 0)
    others = np.arange(c)[None, :] != pred[:, None]
    if ens.scheme == "fa":
        round1 = _partition_costs(_flip_weights(ens.votes, pred, c), ens.spread, gap_pred)
        round1 = np.where(others, round1, _INF)
        pair = np.maximum(round1[:, :, None], round1[:, None, :])
        v1 = _partition_costs(_flip_weights(ens.votes, sec, c), ens.spread, gap_sec)
        v1_logits = _partition_costs(_round_two_weights(scores, pred), ens.spread, np.where(others, gap2, 0))
    else:
        dp = _roe_dp(m + 3)
        g = np.minimum(np.where(others, gap_pred, m + 2), m + 2)
        pair = dp[g[:, :, None], g[:, None, :]]
        pair = np.where(others[:, :, None] & others[:, None, :], pair, _INF)
        v1 = -(-gap_sec // 2)
        v1_logits = -(-np.where(others, gap2, 0) // 2)
    eye = np.eye(c, dtype=bool)[None]
    cert_r1 = np.where(eye, _INF, pair).reshape(n, -1).min(axis=1)
    cert_r2 = np.where(others, np.maximum(v1, v1_logits), _INF).min(axis=1)
    cert = np.minimum(np.minimum(cert_r1, cert_r2), ens.num_partitions + 1) - 1
    return np.where(pred == labels, cert, -1)


def per_sample_certificate(ens: MemberOutputs, labels: np.ndarray, vote: str = "plurality") -> np.ndarray:
    """The published certificate for the ensemble's scheme and vote."""
    if vote == "roe":
        return roe_certificate(ens, labels)
    if ens.scheme == "fa":
        return fa_certificate(ens, labels)
    return dpa_certificate(ens, labels)

