"""Partitions, member training (plain and AGT), executors and scores files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pcert.compiler.torch_model import graph_from_sequential
from pcert.errors import DataError
from pcert.runtime.ensemble.executor import run_tasks
from pcert.runtime.ensemble.members import robustness, train_ensemble
from pcert.runtime.ensemble.multi_sample import certify_multi_sample
from pcert.runtime.ensemble.partition import dpa_partition, fa_partition, fa_spread, sample_digests
from pcert.runtime.ensemble.scores import load_scores


def _square(v: int) -> int:
    return v * v


def blobs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 2)) + 2.5 * y[:, None] - 1.25).astype(np.float32)
    return x, y


def small_graph():
    torch.manual_seed(0)
    return graph_from_sequential(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), (2,))


# ----------------------------------------------------------------------------- partitions
def test_dpa_partition_is_content_addressed():
    x, y = blobs(200)
    part = dpa_partition(x, y, 7)
    perm = np.random.default_rng(1).permutation(200)
    again = dpa_partition(x[perm], y[perm], 7)
    assert (again.assignment == part.assignment[perm]).all()        # order does not matter
    x2 = x.copy()
    x2[5, 0] += 1.0                                                   # one changed sample moves alone
    moved = dpa_partition(x2, y, 7).assignment != part.assignment
    assert moved.sum() <= 1 and (moved.sum() == 0 or moved[5])
    assert part.digests[0] == sample_digests(x[:1], y[:1])[0]
    assert sorted(np.concatenate(part.member_indices()).tolist()) == list(range(200))


def test_fa_spread_is_balanced_and_distinct():
    spread = fa_spread(5, 3)
    assert spread.shape == (15, 3)
    assert all(len(set(row)) == 3 for row in spread.tolist())
    assert (np.bincount(spread.reshape(-1), minlength=15) == 3).all()
    x, y = blobs(300)
    part = fa_partition(x, y, 5, 3)
    sizes = [len(ix) for ix in part.member_indices()]
    assert sum(sizes) == 3 * 300 and part.num_members == 15


# ----------------------------------------------------------------------------- executors
def test_local_pool_keeps_task_order():
    # a builtin: spawned workers need not import this test module (and torch) to run it
    assert run_tasks(abs, [-3, 1, -4, 1, -5], workers=2) == [3, 1, 4, 1, 5]
    assert run_tasks(_square, [3]) == [9]


def test_ray_executor_runs_tasks():
    ray = pytest.importorskip("ray")
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # tests are not importable there
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert run_tasks(_square, [1, 2, 3], kind="ray") == [1, 4, 9]
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- members
def test_plain_members_train_and_certify_end_to_end():
    from pcert.runtime.agt import TrainConfig
    x, y = blobs(240)
    xt, yt = blobs(40, seed=3)
    cfg = TrainConfig(epochs=3, batch=16, lr=0.2)
    run = train_ensemble(small_graph(), x, y, cfg, xt, scheme="dpa", members=5)
    assert run.scores.shape == (40, 5, 2) and run.R is None
    acc = (run.scores.argmax(-1) == yt[:, None]).mean()
    assert acc > 0.8
    star = train_ensemble(small_graph(), x, y, cfg, xt, scheme="dpa_star", members=3, seeds=2)
    assert star.scores.shape == (40, 3, 2, 2)
    res = certify_multi_sample(run.scores, yt, 1)
    assert 0 <= res.certified_count <= 40


def test_agt_members_give_sound_robustness():
    """R_j(x) >= 1 must survive real in-place replacements of one of member j's training points."""
    from pcert.runtime.agt import TrainConfig, train_nominal
    from pcert.runtime.ensemble.members import _forward
    x, y = blobs(240)
    xt, _ = blobs(30, seed=4)
    cfg = TrainConfig(epochs=3, batch=120, lr=0.2, clip=0.5)
    graph = small_graph()
    run = train_ensemble(graph, x, y, cfg, xt, scheme="dpa", members=2, member="agt", budgets=(1, 2, 4))
    assert run.R.shape == (30, 2) and set(np.unique(run.R)) <= {0, 1, 2, 4}
    assert (run.R >= 1).sum() >= 5                       # the check below is not vacuous
    rng = np.random.default_rng(0)
    for j, idx in enumerate(run.partition.member_indices()):
        safe = run.R[:, j] >= 1
        pred = run.scores[:, j].argmax(-1)
        for _ in range(4):
            xp, yp = x[idx].copy(), y[idx].copy()
            k = rng.integers(len(idx))
            yp[k] = 1 - yp[k]
            xp[k] += rng.normal(scale=3.0, size=2).astype(np.float32)
            attacked = _forward(graph, train_nominal(graph, xp, yp, cfg), xt).argmax(-1)
            assert (attacked[safe] == pred[safe]).all()


def test_robustness_takes_the_largest_proven_budget():
    scores = np.array([[2.0, 0.0], [0.0, 1.0]])
    lower = np.array([[[1.5, -0.5], [-0.5, 0.5]], [[0.9, -1.0], [-1.0, -0.5]]])
    upper = np.array([[[2.5, 0.5], [0.5, 1.5]], [[3.0, 1.0], [1.0, 2.0]]])
    # point 0: budget 1 proves (1.5 > 0.5), budget 4 does not (0.9 < 1.0); point 1: budget 1
    # proves (0.5 > 0.5 is false) -> nothing
    assert robustness(scores, lower, upper, (1, 4)).tolist() == [1, 0]
    lower[0, 0, 0] = np.nan
    assert robustness(scores, lower, upper, (1, 4)).tolist() == [0, 0]


# ----------------------------------------------------------------------------- scores files
def test_load_scores_round_trip(tmp_path):
    scores = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    labels = np.array([0, 4, 2, 1])
    np.savez(tmp_path / "s.npz", scores=scores, labels=labels)
    ens = load_scores(tmp_path / "s.npz")
    assert ens.scheme == "dpa" and (ens.labels == labels).all() and ens.outputs().num_classes == 5
    spread = np.array([[0, 1], [1, 2], [2, 0]])
    np.savez(tmp_path / "f.npz", scores=scores, labels=labels, spread=spread)
    assert load_scores(tmp_path / "f.npz").scheme == "fa"


@pytest.mark.parametrize("arrays,match", [
    (dict(scores=np.zeros((4, 3)), labels=np.zeros(4, int)), "float array"),
    (dict(scores=np.zeros((4, 3, 2)), labels=np.zeros(5, int)), "labels must have shape"),
    (dict(scores=np.full((4, 3, 2), np.nan), labels=np.zeros(4, int)), "NaN"),
    (dict(scores=np.zeros((4, 3, 2)), labels=np.full(4, 2)), "labels must lie"),
    (dict(scores=np.zeros((4, 3, 2)), labels=np.zeros(4, int), spread=np.array([[0, 7]])), "outside"),
    (dict(scores=np.zeros((4, 3, 2))), "missing array 'labels'"),
])
def test_load_scores_rejects_bad_files(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_scores(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="not found"):
        load_scores(tmp_path / "absent.npz")
