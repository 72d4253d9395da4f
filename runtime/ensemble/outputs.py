"""Member outputs in one checked form: votes, optional scores, and who trains on which partition.

Every certifier takes a ``MemberOutputs``. A *member* is one voter; a *partition* is one disjoint
piece of the training data. ``spread[t]`` lists the members trained on partition ``t``:
DPA and DPA* (one voter per partition, seeds already averaged) use the identity ``[[0], [1], ...]``;
Finite Aggregation gives each of its partitions to ``d`` members.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcert.errors import DataError

from .voting import average_seeds, member_votes

SCHEMES = ("dpa", "dpa_star", "fa")
VOTES = ("plurality", "roe")


@dataclass(frozen=True)
class MemberOutputs:
    votes: np.ndarray            # [N, M] int64
    scores: np.ndarray | None    # [N, M, C] float (None when only votes are known)
    num_classes: int
    spread: np.ndarray           # [P, d] int64: members trained on each partition
    scheme: str

    @property
    def num_members(self) -> int:
        return self.votes.shape[1]

    @property
    def num_partitions(self) -> int:
        return self.spread.shape[0]

    def take(self, rows: np.ndarray) -> "MemberOutputs":
        """The same ensemble restricted to some test points."""
        return MemberOutputs(self.votes[rows], None if self.scores is None else self.scores[rows],
                             self.num_classes, self.spread, self.scheme)


def member_outputs(outputs: np.ndarray, *, scheme: str = "dpa", spread: np.ndarray | None = None,
                   num_classes: int | None = None) -> MemberOutputs:
    """Check and normalise member outputs.

    ``outputs``: votes [N, M] (integers), or scores [N, M, C] (logits or probabilities), or for
    ``dpa_star`` per-seed scores [N, P, S, C] (averaged here). ``spread`` [P, d] is required for
    ``fa`` and must be absent otherwise.
    """
    if scheme not in SCHEMES:
        raise DataError(f"unknown ensemble scheme {scheme!r} (expected one of {', '.join(SCHEMES)})")
    arr = np.asarray(outputs)
    if arr.size == 0:
        raise DataError("member outputs are empty")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError("member scores contain NaN or infinite values")
    scores = None
    if arr.ndim == 2:
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"2-D member outputs must be integer votes, got dtype {arr.dtype}")
        votes = arr.astype(np.int64)
        if num_classes is None:
            num_classes = int(votes.max()) + 1
        if votes.min() < 0 or votes.max() >= num_classes:
            raise DataError(f"member votes must lie in [0, {num_classes}), got [{votes.min()}, {votes.max()}]")
    else:
        if scheme == "dpa_star":
            if arr.ndim != 4:
                raise DataError(f"DPA* scores must be [N, partitions, seeds, classes], got shape {arr.shape}")
            arr = average_seeds(arr)
        elif arr.ndim != 3:
            raise DataError(f"member scores must be [N, members, classes], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"member scores must be floating point, got dtype {arr.dtype}")
        scores = arr
        if num_classes is not None and num_classes != arr.shape[-1]:
            raise DataError(f"scores have {arr.shape[-1]} classes but num_classes={num_classes}")
        num_classes = arr.shape[-1]
        votes = member_votes(arr)
    m = votes.shape[1]
    if scheme == "fa":
        if spread is None:
            raise DataError("finite aggregation needs a spread map [partitions, d] of member indices")
        spread = np.asarray(spread)
        if spread.ndim != 2 or not np.issubdtype(spread.dtype, np.integer) or spread.size == 0:
            raise DataError(f"spread map must be an integer array [partitions, d], got shape {spread.shape}")
        if spread.min() < 0 or spread.max() >= m:
            raise DataError(f"spread map names members outside [0, {m})")
        if any(len(set(row)) != len(row) for row in spread.tolist()):
            raise DataError("spread map gives a partition to the same member twice")
        spread = spread.astype(np.int64)
    else:
        if spread is not None:
            raise DataError(f"a spread map only applies to finite aggregation, not {scheme!r}")
        spread = np.arange(m, dtype=np.int64)[:, None]
    return MemberOutputs(votes, scores, int(num_classes), spread, scheme)


def check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError(f"labels must have shape [{n}], got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise DataError("labels must be integers")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


def check_robustness(R: np.ndarray | None, n: int, m: int) -> np.ndarray:
    """Intrinsic robustness R[i, j] >= 0 per test point and member (zeros when absent)."""
    if R is None:
        return np.zeros((n, m), dtype=np.int64)
    R = np.asarray(R)
    if R.shape != (n, m):
        raise DataError(f"intrinsic robustness R must have shape [{n}, {m}], got {R.shape}")
    if not np.issubdtype(R.dtype, np.integer):
        if not np.all(np.isfinite(R)) or not np.all(R == np.round(R)):
            raise DataError("intrinsic robustness R must hold integers")
    if n and R.min() < 0:
        raise DataError("intrinsic robustness R must be >= 0")
    return R.astype(np.int64)
