"""Exactness of the branch-and-bound over poisoned member sets (DPA/DPA* with R = 0).

Its pruning drops whole subtrees, so an over-strong bound or a wrong symmetry rule would silently
lose the best attack and over-certify. It is checked against the independent brute-force oracle on
small cases and against the plain enumeration (itself oracle-checked) on thousands of larger ones,
with many identical members (the symmetry rule), ties, run-off rows and stops at a time limit.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from pcert.errors import DataError
from pcert.runtime.ensemble.adversary import build_instance
from pcert.runtime.ensemble.enumerate import branch_bound_applies, solve_branch_bound, solve_enumerate
from pcert.runtime.ensemble.multi_sample import certify_multi_sample, evaluate_allocation
from pcert.runtime.ensemble.outputs import check_robustness, member_outputs

from test_ensemble_oracle import oracle_for, random_instance


def _votes(rng: np.random.Generator, B: int, M: int, C: int, dup: bool) -> tuple[np.ndarray, np.ndarray]:
    """Votes with per-point difficulty and a favourite wrong class; ``dup`` copies members."""
    labels = rng.integers(0, C, B)
    right = rng.uniform(size=(B, M)) < rng.uniform(0.4, 0.95, size=(B, 1))
    confuser = (labels + rng.integers(1, C, B)) % C
    wrong = np.where(rng.uniform(size=(B, M)) < 0.7, confuser[:, None], rng.integers(0, C, (B, M)))
    votes = np.where(right, labels[:, None], wrong)
    if dup:                                           # groups of identical members
        votes = votes[:, rng.integers(0, max(2, M // 3), M)]
    return votes, labels


def _instance(votes, labels, K, C, scheme="dpa"):
    ens = member_outputs(votes, scheme=scheme, num_classes=C)
    return build_instance(ens, labels, K, check_robustness(None, *ens.votes.shape), "plurality")


@pytest.mark.parametrize("scheme,vote", [("dpa", "plurality"), ("dpa_star", "plurality"), ("dpa", "roe")])
def test_branch_bound_matches_oracle(scheme, vote):
    rng = np.random.default_rng(zlib.crc32(f"bb-{scheme}-{vote}".encode()))
    checked = 0
    for trial in range(500):
        inst = random_instance(rng, scheme, vote, with_r=False)
        res = certify_multi_sample(inst["outputs"], inst["labels"], inst["K"], scheme=scheme, vote=vote,
                                   solver="auto")
        batch = res.batches[0]
        if batch.method != "branch_bound":
            continue                                   # ROE with pair conditions, nothing to attack, ...
        checked += 1
        B = len(inst["labels"])
        assert res.certified_count == B - oracle_for(inst), (scheme, vote, trial)
        assert batch.status == "optimal" and batch.incumbent == batch.dual_bound
        assert evaluate_allocation(inst["outputs"], inst["labels"], np.array(batch.allocation), scheme=scheme,
                                   vote=vote) == batch.incumbent
    assert checked >= (50 if vote == "roe" else 300)


@pytest.mark.parametrize("dup", [False, True])
def test_branch_bound_matches_enumeration(dup):
    """2000 instances of up to 40 points and 14 members, K up to 6, against plain enumeration."""
    rng = np.random.default_rng(11 + dup)
    for trial in range(1000):
        C = int(rng.integers(3, 6))
        M = int(rng.integers(3, 15))
        votes, labels = _votes(rng, int(rng.integers(1, 41)), M, C, dup)
        K = int(rng.integers(1, min(M, 6) + 1))
        inst = _instance(votes, labels, K, C)
        if not branch_bound_applies(inst):
            assert len(inst.points) == 0
            continue
        want, _, _ = solve_enumerate(inst)
        got = solve_branch_bound(inst)
        assert got.complete and got.broken == got.bound == want, (trial, K, M)
        assert len(got.members) <= K and len(set(got.members.tolist())) == len(got.members)


def test_identical_members_are_counted_not_skipped():
    # three identical members vote for the runner-up at both points' expense; K = 2 must use two of them
    votes = np.array([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 2, 1, 1, 1]])
    labels = np.array([0, 0])
    inst = _instance(votes, labels, 2, 3)
    res = solve_branch_bound(inst)
    assert res.complete and res.broken == 2 == solve_enumerate(inst)[0]
    assert sorted(res.members.tolist())[:2] in ([0, 1], [0, 2], [1, 2])


def test_time_limited_bound_covers_the_optimum():
    """Stopped early, the bound is over the open subtrees: never below the exact optimum."""
    rng = np.random.default_rng(5)
    for trial in range(20):
        votes, labels = _votes(rng, 120, 24, 6, False)
        inst = _instance(votes, labels, 6, 6)
        if not branch_bound_applies(inst):
            continue
        exact = solve_branch_bound(inst)
        cut = solve_branch_bound(inst, time_limit=1e-9)
        assert exact.complete and cut.broken <= exact.broken <= cut.bound, trial
        res = certify_multi_sample(votes, labels, 6, num_classes=6, solver="branch_bound", time_limit=1e-9)
        b = res.batches[0]
        assert b.dual_bound >= exact.broken + b.wrong and b.incumbent <= b.dual_bound
        assert res.certified_count <= len(labels) - exact.broken - b.wrong


def test_auto_uses_branch_bound_only_where_it_applies():
    rng = np.random.default_rng(3)
    votes, labels = _votes(rng, 60, 12, 4, False)
    assert certify_multi_sample(votes, labels, 3, num_classes=4).batches[0].method == "branch_bound"
    R = np.ones_like(votes)
    assert certify_multi_sample(votes, labels, 3, R=R, num_classes=4).batches[0].method == "enumerate"
    ring = np.array([[t, (t + 1) % 12] for t in range(12)])
    fa = certify_multi_sample(votes, labels, 3, scheme="fa", spread=ring, num_classes=4)
    assert fa.batches[0].method == "enumerate"
    with pytest.raises(DataError, match="branch_bound"):
        certify_multi_sample(votes, labels, 3, scheme="fa", spread=ring, num_classes=4, solver="branch_bound")
    for solver in ("milp", "enumerate"):
        assert certify_multi_sample(votes, labels, 3, num_classes=4, solver=solver).certified_count == \
            certify_multi_sample(votes, labels, 3, num_classes=4).certified_count


def test_auto_hands_an_unfinished_search_to_the_milp(tmp_path):
    """Under auto a search stopped at half the time limit goes on as a MILP (whose MPS is written); the
    tighter bound counts and stays at or above the exact optimum."""
    rng = np.random.default_rng(9)
    votes, labels = _votes(rng, 150, 24, 6, False)
    exact = certify_multi_sample(votes, labels, 6, num_classes=6)
    assert exact.batches[0].method == "branch_bound" and exact.optimal
    res = certify_multi_sample(votes, labels, 6, num_classes=6, time_limit=0.01, mps_dir=str(tmp_path))
    b = res.batches[0]
    assert b.method == "branch_bound+milp" and (tmp_path / "batch_0.mps").is_file()
    assert b.incumbent <= exact.batches[0].incumbent <= b.dual_bound
    assert res.certified_count <= exact.certified_count
    assert evaluate_allocation(votes, labels, np.array(b.allocation), num_classes=6) == b.incumbent
