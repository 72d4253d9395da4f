"""Deterministic data partitions for DPA, DPA* and Finite Aggregation.

A sample's partition depends only on its content: sha256 over the float32 bytes of x and the
int64 bytes of its label. Changing, inserting or deleting one sample therefore touches exactly
one partition (a changed sample leaves one partition and may enter another: two elements of the
symmetric difference), which is what the DPA/FA certificates count.

FA (Wang et al.): M*d partitions by hash; partition t is spread to the d members
``(sigma(t) + r*M) mod (M*d)``, r = 0..d-1, with sigma a permutation fixed by hashing the
partition index. The d destinations are distinct and every member receives exactly d partitions.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pcert.errors import DataError


@dataclass(frozen=True)
class Partition:
    assignment: np.ndarray          # [N] partition of each training sample
    digests: list[str]              # [N] sha256 hex of each sample (the recorded map)
    spread: np.ndarray              # [P, d] members trained on each partition
    num_members: int

    def member_indices(self) -> list[np.ndarray]:
        """Training-sample indices of every member (union of its partitions), sorted."""
        parts = [np.flatnonzero(self.assignment == t) for t in range(self.spread.shape[0])]
        members: list[list[np.ndarray]] = [[] for _ in range(self.num_members)]
        for t, dests in enumerate(self.spread):
            for j in dests:
                members[int(j)].append(parts[t])
        return [np.sort(np.concatenate(m)) if m else np.zeros(0, dtype=np.int64) for m in members]

    def record(self) -> dict:
        return {"assignment": self.assignment.tolist(), "sha256": self.digests, "spread": self.spread.tolist()}


def sample_digests(x: np.ndarray, y: np.ndarray) -> list[str]:
    """sha256 of each sample's float32 feature bytes followed by its int64 label bytes."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    y = np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"training data: {x.shape[0]} inputs but {y.shape[0]} labels")
    y = y.astype(np.int64) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)
    rows = x.reshape(x.shape[0], -1)
    return [hashlib.sha256(rows[i].tobytes() + y[i].tobytes()).hexdigest() for i in range(x.shape[0])]


def _bucket(digests: list[str], n: int) -> np.ndarray:
    return np.array([int(h, 16) % n for h in digests], dtype=np.int64)


def dpa_partition(x: np.ndarray, y: np.ndarray, members: int) -> Partition:
    if members < 1:
        raise DataError(f"an ensemble needs at least one member, got {members}")
    digests = sample_digests(x, y)
    return Partition(_bucket(digests, members), digests, np.arange(members)[:, None], members)


def fa_spread(members: int, d: int) -> np.ndarray:
    """[M*d, d] spread map: distinct destinations, every member fed by exactly d partitions."""
    p = members * d
    keys = [hashlib.sha256(f"pcert-fa-spread:{t}".encode()).hexdigest() for t in range(p)]
    sigma = np.argsort(np.array([int(k, 16) % (1 << 61) for k in keys]), kind="stable")
    return (sigma[:, None] + members * np.arange(d)[None, :]) % p


def fa_partition(x: np.ndarray, y: np.ndarray, members: int, d: int) -> Partition:
    """M*d partitions and M*d members, each member trained on d partitions."""
    if members < 1 or d < 1:
        raise DataError(f"finite aggregation needs members >= 1 and spread >= 1, got {members}, {d}")
    digests = sample_digests(x, y)
    return Partition(_bucket(digests, members * d), digests, fa_spread(members, d), members * d)
