"""Train ensemble members on their partitions and collect test scores and intrinsic robustness.

Members are trained one task each (partitions differ in size, so one process per member is the
simple sound choice; tasks run on the executor). ``plain`` members use AGT's own plain-SGD recipe
(``train_nominal``: the same ``TrainConfig``). ``agt`` members run ``train_with_bounds`` with
one unbounded budget point per n in ``budgets`` and R_j(x) = the largest n whose output bounds
prove the member's prediction at x (lower bound of the predicted logit > upper bound of every
other logit), 0 if none. DPA* trains ``seeds`` members per partition (``order_seed`` = seed) and
averages their logits; its R uses the averaged bounds.

What R_j(x) covers. AGT bounds training on a dataset of fixed size in which at most n points
are *replaced* in place (any features and labels): every batch of the fixed batch order then
holds at most n of them. It says nothing about insertions or deletions, which change the
dataset size and shift the batch order. So with ``agt`` members the multi-sample certificate
holds for an adversary that modifies at most K training points in place, each modified point
counted against the member(s) whose partition it sits in, with partitions fixed before the
attack. It does not cover general poisoning (|D symmetric-difference T(D)| <= K with
insertions, deletions, or modified points re-hashed into another partition); plain members
(R = 0) keep the full general-poisoning guarantee of DPA/FA.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from pcert.compiler.graph import LayerGraph
from pcert.compiler.torch_model import to_torch
from pcert.errors import UserError

from .executor import run_tasks
from .partition import Partition, dpa_partition, fa_partition


@dataclass(frozen=True)
class MemberTask:
    graph: LayerGraph
    x: np.ndarray
    y: np.ndarray
    cfg: object                      # pcert.runtime.agt.TrainConfig
    x_test: np.ndarray
    kind: str = "plain"              # "plain" | "agt"
    budgets: tuple[int, ...] = ()
    method: str = "ibp"
    cover: str = "nominal"           # see pcert.runtime.agt.train_with_bounds


@dataclass
class EnsembleRun:
    scores: np.ndarray               # [N, M, C] (DPA*: [N, P, S, C])
    R: np.ndarray | None             # [N, M] intrinsic robustness (agt members)
    partition: Partition
    scheme: str


def _as_classes(z: np.ndarray) -> np.ndarray:
    """One-logit binary outputs z -> two-class scores [0, z] (class 1 iff z > 0)."""
    return np.concatenate([np.zeros_like(z), z], axis=-1) if z.shape[-1] == 1 else z


def _forward(graph: LayerGraph, params: list[torch.Tensor], x: np.ndarray) -> np.ndarray:
    model = to_torch(graph)
    it = iter(params)
    with torch.no_grad():
        for layer, mod in zip(graph.layers, model):
            if layer.is_parametric:
                mod.weight.copy_(next(it))
                if layer.bias is not None:
                    mod.bias.copy_(next(it))
        out = model(torch.as_tensor(x, dtype=torch.float32))
    return _as_classes(out.reshape(out.shape[0], -1).numpy())


def train_member(task: MemberTask) -> dict:
    """Scores [N_test, C] and, for AGT members, output bounds [P, N_test, C]."""
    from pcert.runtime.agt import BudgetPoint, Objective, certify, train_nominal, train_with_bounds

    if len(task.y) == 0:          # an empty partition keeps the initial weights (any poisoning may flip it)
        scores = _forward(task.graph, [torch.as_tensor(a) for layer in task.graph.parametric_layers
                                       for a in (layer.weight, layer.bias) if a is not None], task.x_test)
        return {"scores": scores, "lower": None, "upper": None}
    if task.kind == "plain":
        params = train_nominal(task.graph, task.x, task.y, task.cfg)
        return {"scores": _forward(task.graph, params, task.x_test), "lower": None, "upper": None}
    points = [BudgetPoint(kind="unbounded", n=int(n)) for n in task.budgets]
    result = train_with_bounds(task.graph, task.x, task.y, task.cfg, points, method=task.method, cover=task.cover)
    cert = certify(task.graph, result, task.x_test, np.zeros(len(task.x_test), dtype=np.int64), Objective(),
                   method=task.method)
    return {"scores": _numpy(cert.nominal_output), "lower": _numpy(cert.lower), "upper": _numpy(cert.upper)}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return _as_classes(t.detach().cpu().numpy())


def robustness(scores: np.ndarray, lower: np.ndarray, upper: np.ndarray, budgets: tuple[int, ...]) -> np.ndarray:
    """R[i] = largest budget whose bounds prove the arg-max of ``scores`` at point i (0 if none).

    scores [N, C]; lower/upper [P, N, C]; non-finite bounds prove nothing.
    """
    pred = np.argmax(scores, axis=-1)
    n = np.arange(scores.shape[0])
    lo_pred = lower[:, n, pred]                                            # [P, N]
    hi = upper.copy()
    hi[:, n, pred] = -np.inf
    proven = np.isfinite(lower).all(-1) & np.isfinite(upper).all(-1) & (lo_pred > hi.max(-1))
    b = np.asarray(budgets, dtype=np.int64)[:, None]
    return np.where(proven, b, 0).max(axis=0) if len(budgets) else np.zeros(len(n), dtype=np.int64)


def train_ensemble(graph: LayerGraph, x: np.ndarray, y: np.ndarray, cfg, x_test: np.ndarray, *, scheme: str,
                   members: int, seeds: int = 1, spread: int = 1, member: str = "plain",
                   budgets: tuple[int, ...] = (), method: str = "ibp", cover: str = "nominal", executor: str = "local",
                   workers: int | None = None, address: str | None = None, quiet: bool = True) -> EnsembleRun:
    """Partition (x, y), train every member, and return test scores (and R for AGT members)."""
    if member not in ("plain", "agt"):
        raise UserError(f"member: unknown kind {member!r} (expected 'plain' or 'agt')")
    if member == "agt" and not budgets:
        raise UserError("member agt: give the poisoning budgets n to certify, e.g. n: [1, 2, 4]")
    if scheme == "fa":
        part = fa_partition(x, y, members, spread)
    elif scheme in ("dpa", "dpa_star"):
        part = dpa_partition(x, y, members)
    else:
        raise UserError(f"ensemble: unknown scheme {scheme!r}")
    seeds = seeds if scheme == "dpa_star" else 1
    tasks = [MemberTask(graph, x[idx], y[idx], dataclasses.replace(cfg, order_seed=cfg.order_seed + s), x_test,
                        member, tuple(budgets), method, cover)
             for idx in part.member_indices() for s in range(seeds)]
    out = run_tasks(train_member, tasks, kind=executor, workers=workers, address=address, quiet=quiet)
    n_units = len(tasks) // seeds
    scores = np.stack([o["scores"] for o in out]).reshape(n_units, seeds, len(x_test), -1)
    R = None
    if member == "agt":
        shape = (n_units, seeds, len(budgets), len(x_test), scores.shape[-1])
        empty = np.full(shape[2:], np.nan)                  # an empty partition proves nothing
        lo = np.stack([empty if o["lower"] is None else o["lower"] for o in out]).reshape(shape).mean(1)
        hi = np.stack([empty if o["upper"] is None else o["upper"] for o in out]).reshape(shape).mean(1)
        R = np.stack([robustness(scores[u].mean(0), lo[u], hi[u], tuple(budgets)) for u in range(n_units)], axis=1)
    if scheme == "dpa_star":
        return EnsembleRun(scores.transpose(2, 0, 1, 3), R, part, scheme)
    return EnsembleRun(scores[:, 0].transpose(1, 0, 2), R, part, scheme)
