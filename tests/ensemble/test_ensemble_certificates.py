"""Votes, per-sample certificates (hand-computed from the definitions) and MILP structure."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pcert.errors import DataError
from pcert.runtime.ensemble.adversary import build_instance
from pcert.runtime.ensemble.milp import build_model, solve_milp
from pcert.runtime.ensemble.multi_sample import certify_multi_sample, evaluate_allocation
from pcert.runtime.ensemble.outputs import check_robustness, member_outputs
from pcert.runtime.ensemble.per_sample import dpa_certificate, fa_certificate, roe_certificate
from pcert.runtime.ensemble.voting import plurality, roe


def onehot_scores(votes, C, prefs=None):
    """Scores whose arg-max is ``votes``; ``prefs[i][j]`` optionally orders the other classes."""
    votes = np.asarray(votes)
    s = np.zeros(votes.shape + (C,))
    if prefs is not None:
        s += np.asarray(prefs, dtype=float)
    idx = np.indices(votes.shape)
    s[idx[0], idx[1], votes] = 10.0
    return s


# ----------------------------------------------------------------------------- voting
def test_plurality_ties_go_to_smaller_class():
    votes = np.array([[0, 0, 1, 1, 2], [2, 2, 1, 1, 0], [3, 3, 3, 1, 1]])
    assert plurality(votes, 4).tolist() == [0, 1, 3]


def test_roe_two_rounds_and_ties():
    # round 1: counts [2, 2, 1] -> finalists 0 and 1; member 4 (votes 2) prefers 1 over 0
    prefs = np.zeros((1, 5, 3))
    prefs[0, 4, 1] = 5.0
    scores = onehot_scores([[0, 0, 1, 1, 2]], 3, prefs)
    assert plurality(np.array([[0, 0, 1, 1, 2]]), 3)[0] == 0
    assert roe(scores)[0] == 1
    # the same member indifferent between 0 and 1: round-2 tie 2:2 -> smaller class 0
    prefs[0, 4, 1] = 0.0
    assert roe(onehot_scores([[0, 0, 1, 1, 2]], 3, prefs))[0] == 0


def test_roe_second_finalist_tie_breaks_to_smaller_index():
    # counts [3, 1, 1]: finalists 0 and 1 (1 and 2 tie); every 2-voter prefers 1 over 0
    prefs = np.zeros((1, 5, 3))
    prefs[0, 4, 1] = 5.0
    scores = onehot_scores([[0, 0, 0, 1, 2]], 3, prefs)
    assert roe(scores)[0] == 0      # 0 keeps 3 round-2 votes against 2


# ----------------------------------------------------------------------------- per-sample
def test_dpa_certificate_hand_cases():
    ens = member_outputs(np.array([[0, 0, 1, 1, 2], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 1, 1, 2]]),
                         num_classes=3)
    # [2,2,1] pred 0: (2 - max(2, 1)) // 2 = 0; [2,3,0] pred 1: (3 - (2 + 1)) // 2 = 0;
    # [4,1,0]: (4 - 1) // 2 = 1; last: prediction 0 but label 1 -> -1
    assert dpa_certificate(ens, np.array([0, 1, 0, 1])).tolist() == [0, 0, 1, -1]


def test_fa_certificate_hand_cases():
    ring4 = np.array([[0, 1], [1, 2], [2, 3], [3, 0]])
    ens = member_outputs(np.array([[0, 0, 0, 1]]), scheme="fa", spread=ring4, num_classes=2)
    # margin 3 - 1 - 0 = 2; Delta = [4, 4, 2, 2]; the largest alone exceeds 2 -> 0
    assert fa_certificate(ens, np.array([0])).tolist() == [0]
    ring6 = np.array([[t, (t + 1) % 6] for t in range(6)])
    ens = member_outputs(np.zeros((1, 6), dtype=int), scheme="fa", spread=ring6, num_classes=2)
    # margin 6, every Delta = 4: one partition (4 <= 6) certified, two (8 > 6) not -> 1
    assert fa_certificate(ens, np.array([0])).tolist() == [1]


def test_fa_with_identity_spread_equals_dpa():
    rng = np.random.default_rng(3)
    votes = rng.integers(0, 4, (200, 9))
    labels = plurality(votes, 4)
    dpa = dpa_certificate(member_outputs(votes, num_classes=4), labels)
    fa = fa_certificate(member_outputs(votes, scheme="fa", spread=np.arange(9)[:, None], num_classes=4), labels)
    assert (dpa == fa).all()


def test_roe_certificate_hand_case():
    # votes [0,0,1,1,2]; member 4 prefers 1 over 0 -> ROE predicts 1 (round 2: 3 against 2).
    # Round 1: gap(1 -> 0) = 0, gap(1 -> 2) = 2 -> dp[0, 2] = 1. Round 2 with c = 0 (the other
    # finalist): ceil((3 - 2 + 0) / 2) = 1. Cert = min(1, 1) - 1 = 0.
    prefs = np.zeros((1, 5, 3))
    prefs[0, 4, 1] = 5.0
    ens = member_outputs(onehot_scores([[0, 0, 1, 1, 2]], 3, prefs))
    assert roe_certificate(ens, np.array([1])).tolist() == [0]
    assert roe_certificate(ens, np.array([0])).tolist() == [-1]
    # votes [0,0,0,0,0,1,2] (the 2-voter is indifferent between 0 and 1): round 1 needs both 1 and
    # 2 above 0: gaps 5 - 1 + 1 = 5 each -> dp[5, 5] = 4. Round 2 against the other finalist 1:
    # 0 flips in round 1, round-2 gap 5 - 1 + 1 = 5 -> 3. Cert = min(4, 3) - 1 = 2, and it is
    # tight: three 0-voters switched to 1 win both rounds for 1.
    ens = member_outputs(onehot_scores([[0, 0, 0, 0, 0, 1, 2]], 3, np.zeros((1, 7, 3))))
    assert roe_certificate(ens, np.array([0])).tolist() == [2]
    res = certify_multi_sample(ens.scores, np.array([0]), 3, vote="roe")
    assert res.certified_count == 0 and res.per_sample_certified == 0


# ----------------------------------------------------------------------------- multi-sample
@pytest.mark.parametrize("solver", ["milp", "enumerate"])
def test_design_counter_example_breaks_both_points(solver):
    """DESIGN.md: the thesis's shortcut certifies one point; poisoning members 1 and 5 breaks both."""
    votes = np.array([[0, 0, 0, 1, 2], [2, 1, 0, 0, 0]])
    labels = np.array([0, 0])
    res = certify_multi_sample(votes, labels, 2, num_classes=3, solver=solver)
    assert res.certified_count == 0
    assert res.batches[0].broken == [0, 1]
    assert evaluate_allocation(votes, labels, np.array([1, 0, 0, 0, 1]), num_classes=3) == 2
    assert evaluate_allocation(votes, labels, np.array([0, 0, 0, 1, 1]), num_classes=3) == 1
    assert certify_multi_sample(votes, labels, 1, num_classes=3, solver=solver).certified_count == 2


@pytest.mark.parametrize("solver", ["milp", "enumerate"])
def test_batch_of_one_reproduces_dpa_certificate(solver):
    rng = np.random.default_rng(11)
    for _ in range(12):
        M, C = int(rng.integers(3, 12)), int(rng.integers(2, 5))
        votes = np.where(rng.uniform(size=(1, M)) < 0.7, 0, rng.integers(0, C, (1, M)))
        label = np.array([0])
        cert = int(dpa_certificate(member_outputs(votes, num_classes=C), label)[0])
        for K in range(0, M // 2 + 2):
            res = certify_multi_sample(votes, label, K, num_classes=C, solver=solver)
            assert res.certified_count == int(cert >= K), (votes, K, cert)


def test_multi_sample_never_certifies_less_than_per_sample():
    rng = np.random.default_rng(5)
    ring = np.array([[t, (t + 1) % 10, (t + 3) % 10] for t in range(10)])
    for scheme, vote in [("dpa", "plurality"), ("fa", "plurality"), ("dpa", "roe"), ("fa", "roe")]:
        labels = rng.integers(0, 3, 12)
        pref = np.where(rng.uniform(size=(12, 10)) < 0.75, labels[:, None], rng.integers(0, 3, (12, 10)))
        scores = onehot_scores(pref, 3, rng.normal(size=(12, 10, 3)))
        spread = ring if scheme == "fa" else None
        for K in (1, 2):
            res = certify_multi_sample(scores, labels, K, scheme=scheme, vote=vote, spread=spread, solver="milp")
            assert res.certified_count >= res.per_sample_certified


def test_structure_wrong_and_safe_points_get_no_conditions():
    votes = np.array([[0] * 9, [1] * 9, [0, 0, 0, 0, 0, 1, 1, 1, 1]])   # safe, wrong, vulnerable
    labels = np.array([0, 0, 0])
    ens = member_outputs(votes, num_classes=2)
    safe = dpa_certificate(ens, labels) >= 2
    inst = build_instance(ens, labels, 2, check_robustness(None, 3, 9), "plurality", safe=safe)
    assert inst.points.tolist() == [2] and inst.wrong.tolist() == [False, True, False]
    model, _ = build_model(inst)
    assert len(model.s) == 1                      # one target class at one point


def test_structure_identical_members_merge_into_one_integer():
    votes = np.array([[0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 2, 1, 1]])
    labels = np.array([0, 0])
    ens = member_outputs(votes, num_classes=3)
    inst = build_instance(ens, labels, 3, check_robustness(None, 2, 7), "plurality")
    model, maps = build_model(inst)
    # members 0-3 vote alike everywhere: one variable counting how many of them are poisoned
    assert sorted(len(c) for c in maps["cols"]) == [1, 1, 1, 4]
    assert len(model.y) == 4 and max(v.ub for v in model.y.values()) == 4
    ref = certify_multi_sample(votes, labels, 3, num_classes=3, solver="enumerate").certified_count
    assert certify_multi_sample(votes, labels, 3, num_classes=3, solver="milp").certified_count == ref


def test_structure_binary_partitions_when_r_is_zero():
    ring = np.array([[t, (t + 1) % 6] for t in range(6)])
    votes = np.array([[0, 0, 0, 0, 1, 2], [0, 0, 1, 0, 0, 0]])
    labels = np.array([0, 0])
    ens = member_outputs(votes, scheme="fa", spread=ring, num_classes=3)
    inst = build_instance(ens, labels, 3, check_robustness(None, 2, 6), "plurality")
    model, _ = build_model(inst)
    assert all(v.is_binary() for v in model.a.values())
    R = np.ones((2, 6), dtype=int)
    inst = build_instance(ens, labels, 3, R, "plurality")
    model, _ = build_model(inst)
    assert not any(v.is_binary() for v in model.a.values())
    res = certify_multi_sample(votes, labels, 3, scheme="fa", spread=ring, R=R, num_classes=3, solver="milp")
    assert res.certified_count == certify_multi_sample(votes, labels, 3, scheme="fa", spread=ring, R=R,
                                                       num_classes=3, solver="enumerate").certified_count


def test_intrinsic_robustness_raises_the_price_of_a_flip():
    votes = np.array([[0, 0, 0, 1, 2]])
    labels = np.array([0])
    # with R = 1 everywhere each flip costs two points: K = 2 buys one flip, which is not enough
    R = np.ones((1, 5), dtype=int)
    assert certify_multi_sample(votes, labels, 2, R=R, num_classes=3).certified_count == 1
    assert certify_multi_sample(votes, labels, 4, R=R, num_classes=3).certified_count == 0


def test_time_limited_solve_reports_dual_bound(tmp_path):
    rng = np.random.default_rng(0)
    M, C, B = 40, 10, 300
    labels = rng.integers(0, C, B)
    votes = np.where(rng.uniform(size=(B, M)) < 0.55, labels[:, None], rng.integers(0, C, (B, M)))
    res = certify_multi_sample(votes, labels, 6, num_classes=C, solver="milp", time_limit=0.05,
                               mps_dir=str(tmp_path))
    b = res.batches[0]
    assert b.status in ("time_limit", "optimal")
    assert b.dual_bound >= b.incumbent
    assert b.certified_count == B - int(np.floor(b.dual_bound + 1e-6))
    assert evaluate_allocation(votes, labels, np.array(b.allocation), num_classes=C) == b.incumbent
    assert sum(b.allocation) <= 6
    text = open(os.path.join(tmp_path, "batch_0.mps")).read()
    assert "ROWS" in text and "COLUMNS" in text
    # the sound answer can only be below the exact one (solved without a limit)
    exact = certify_multi_sample(votes, labels, 6, num_classes=C, solver="milp")
    assert exact.optimal and res.certified_count <= exact.certified_count


def test_time_limited_bound_is_never_the_incumbent():
    """Without a proof the bound must stay at or above every real attack (checked on a solve that
    is stopped before it starts: no incumbent, dual bound = every conditioned point)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 60)
    votes = np.where(rng.uniform(size=(60, 20)) < 0.6, labels[:, None], rng.integers(0, 5, (60, 20)))
    ens = member_outputs(votes, num_classes=5)
    inst = build_instance(ens, labels, 4, check_robustness(None, 60, 20), "plurality")
    sol = solve_milp(inst, time_limit=1e-9)
    assert sol.dual_bound >= sol.incumbent
    if sol.status != "optimal":
        assert sol.dual_bound >= certify_multi_sample(votes, labels, 4, num_classes=5, solver="enumerate") \
            .batches[0].incumbent - int(inst.wrong.sum())


@pytest.mark.parametrize("kwargs,match", [
    (dict(outputs=np.array([[0, 1]]), labels=np.array([0, 1])), "labels must have shape"),
    (dict(outputs=np.array([[0, 1]]), labels=np.array([5]), num_classes=2), "labels must lie"),
    (dict(outputs=np.full((1, 2, 3), np.nan), labels=np.array([0])), "NaN"),
    (dict(outputs=np.array([[0, 1]]), labels=np.array([0]), scheme="fa"), "spread map"),
    (dict(outputs=np.array([[0, 1]]), labels=np.array([0]), vote="roe"), "scores"),
    (dict(outputs=np.array([[0, 1]]), labels=np.array([0]), R=-np.ones((1, 2), int)), "R must be >= 0"),
    (dict(outputs=np.array([[0, 1]]), labels=np.array([0]), solver="gurobi"), "unknown solver"),
])
def test_bad_input_is_a_data_error(kwargs, match):
    with pytest.raises(DataError, match=match):
        certify_multi_sample(K=1, **kwargs)


def test_auto_picks_enumeration_for_small_budgets_and_milp_for_large():
    """With R > 0 (no branch-and-bound) auto estimates the enumeration's work; with R = 0 it searches."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 80)
    votes = np.where(rng.uniform(size=(80, 30)) < 0.45, labels[:, None], rng.integers(0, 4, (80, 30)))
    R = np.ones_like(votes)
    small = certify_multi_sample(votes, labels, 3, R=R, num_classes=4)
    assert small.batches[0].method == "enumerate" and small.batches[0].conditioned > 0
    exact = certify_multi_sample(votes, labels, 3, R=R, num_classes=4, solver="milp")
    assert exact.certified_count == small.certified_count
    large = certify_multi_sample(votes, labels, 12, R=R, num_classes=4, time_limit=2.0)
    assert large.batches[0].method == "milp"
    assert large.batches[0].dual_bound >= large.batches[0].incumbent
    free = certify_multi_sample(votes, labels, 3, num_classes=4)
    assert free.batches[0].method == "branch_bound"
    assert free.certified_count == certify_multi_sample(votes, labels, 3, num_classes=4, solver="milp").certified_count
