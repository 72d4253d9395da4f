"""Ensemble votes: plurality and Run-Off Election (ROE), with ties derived from the definitions.

Conventions (shared by every certifier in this package):

* A member's vote is the arg-max of its scores, ties toward the smaller class index
  (``np.argmax`` returns the first maximum).
* Plurality: the class with the most votes, ties toward the smaller class index. So class ``c'``
  beats ``c`` iff ``v[c'] > v[c]`` or (``v[c'] == v[c]`` and ``c' < c``).
* ROE (Rezaei et al., 2023): round 1 ranks classes by votes with the plurality rule and keeps the
  top two ``c1`` (the plurality winner) and ``c2`` (the best of the rest). Round 2: member ``j``
  votes for ``c`` in ``{c1, c2}`` iff ``s_j(c) > s_j(other)`` (strict, as in the published
  ``sum_j 1[f_j(x, c) > f_j(x, c')]``); a member with equal scores votes for neither. The
  finalist with more round-2 votes wins, ties toward the smaller class index.
* DPA*: a partition's scores are the mean over its seeds; the partition is then one voter.
"""
from __future__ import annotations

import numpy as np

from pcert.errors import DataError


def member_votes(scores: np.ndarray) -> np.ndarray:
    """[N, M, C] scores -> [N, M] votes (arg-max, ties toward the smaller class index)."""
    return np.argmax(scores, axis=-1)


def average_seeds(scores: np.ndarray) -> np.ndarray:
    """DPA*: [N, P, S, C] per-seed scores -> [N, P, C] partition scores (mean over seeds)."""
    if scores.ndim != 4:
        raise DataError(f"DPA* scores must have shape [N, partitions, seeds, classes], got {scores.shape}")
    return scores.mean(axis=2, dtype=np.float64)


def vote_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """[N, M] votes -> [N, C] counts."""
    n = votes.shape[0]
    counts = np.zeros((n, num_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), votes.shape[1]), votes.reshape(-1)), 1)
    return counts


def plurality(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """[N, M] votes -> [N] plurality winner (ties toward the smaller class index)."""
    return np.argmax(vote_counts(votes, num_classes), axis=1)


def top_two(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round-1 finalists (c1, c2) from [N, C] counts, ranked by the plurality rule."""
    c1 = np.argmax(counts, axis=1)
    masked = counts.astype(np.float64).copy()
    masked[np.arange(len(c1)), c1] = -np.inf
    return c1, np.argmax(masked, axis=1)


def round_two_counts(scores: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Members strictly preferring class a[i] over b[i] and the reverse: two [N] counts."""
    idx = np.arange(scores.shape[0])
    sa = scores[idx, :, a]
    sb = scores[idx, :, b]
    return (sa > sb).sum(axis=1), (sb > sa).sum(axis=1)


def roe(scores: np.ndarray) -> np.ndarray:
    """[N, M, C] member scores -> [N] Run-Off Election prediction."""
    c1, c2 = top_two(vote_counts(member_votes(scores), scores.shape[-1]))
    n1, n2 = round_two_counts(scores, c1, c2)
    return np.where(n1 > n2, c1, np.where(n2 > n1, c2, np.minimum(c1, c2)))


def predict(votes: np.ndarray, scores: np.ndarray | None, num_classes: int, vote: str) -> np.ndarray:
    """Ensemble prediction under ``vote`` in {"plurality", "roe"}."""
    if vote == "plurality":
        return plurality(votes, num_classes)
    if vote == "roe":
        if scores is None:
            raise DataError("run-off election needs member scores [N, M, C], not only votes")
        return roe(scores)
    raise DataError(f"unknown vote {vote!r} (expected 'plurality' or 'roe')")
