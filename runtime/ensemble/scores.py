"""Ensembles given as precomputed member scores (``ensemble scores { path: ... }``).

File format (.npz): ``scores`` [N, M, C] float (logits or probabilities, one voter per member),
``labels`` [N] integers in [0, C), optional ``spread`` [P, d] integers (FA: the members trained on
each partition), optional ``R`` [N, M] non-negative integers (intrinsic robustness).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcert.errors import DataError

from .outputs import MemberOutputs, check_labels, check_robustness, member_outputs


@dataclass(frozen=True)
class ScoresEnsemble:
    scores: np.ndarray               # [N, M, C]
    labels: np.ndarray               # [N]
    spread: np.ndarray | None        # [P, d] (FA)
    R: np.ndarray | None             # [N, M]

    @property
    def scheme(self) -> str:
        return "dpa" if self.spread is None else "fa"

    def outputs(self) -> MemberOutputs:
        return member_outputs(self.scores, scheme=self.scheme, spread=self.spread)


def load_scores(path: str | Path) -> ScoresEnsemble:
    """Read and check a scores file; every problem is a ``DataError`` naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{path}: scores file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    for key in ("scores", "labels"):
        if key not in data:
            raise DataError(f"{path}: missing array {key!r} (found: {', '.join(sorted(data)) or 'none'})")
    unknown = set(data) - {"scores", "labels", "spread", "R"}
    if unknown:
        raise DataError(f"{path}: unknown arrays {', '.join(sorted(unknown))} (expected scores, labels, spread, R)")
    scores = data["scores"]
    if scores.ndim != 3 or not np.issubdtype(scores.dtype, np.floating):
        raise DataError(f"{path}: scores must be a float array [N, M, C], got {scores.dtype} {list(scores.shape)}")
    try:
        spread = data.get("spread")
        ens = member_outputs(scores, scheme="dpa" if spread is None else "fa", spread=spread)
        labels = check_labels(data["labels"], scores.shape[0], ens.num_classes)
        R = check_robustness(data["R"], *scores.shape[:2]) if "R" in data else None
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return ScoresEnsemble(scores, labels, None if spread is None else ens.spread, R)
