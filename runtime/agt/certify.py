"""Certificates from parameter bounds (AGT App. G): per test point output bounds, then metrics.

Classification: a point is certified when one class's lower logit beats every other class's upper
logit (strictly, so argmax ties cannot flip it) and that class is the nominal prediction (and, for
targeted and backdoor objectives, the true label). One-output models are binary: the logit (or the
final sigmoid) is compared with 0 (0.5), class 1 when strictly above. Metric bounds are rounded
toward the pessimistic side. Nothing is printed; plain tensors and floats come back.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pcert.compiler.graph import LayerGraph
from pcert.errors import DataError, UserError
from pcert.runtime.bounds.ibp import param_index
from pcert.runtime.bounds.interval import input_box, unit_roundoff

from .backward import forward_point
from .config import AGTResult, Certificates, Objective
from .losses import softmax_bounds



def fraction(mask: Tensor) -> float:
    """Exact count / total, the same on every device (no float32 averaging)."""
    return int(mask.sum().item()) / max(int(mask.numel()), 1)


def mean_bound(values: Tensor, *, up: bool) -> float:
    """Mean of per-point loss bounds, rounded outward so the averaged bound stays a bound."""
    v = values.detach().double().flatten()
    if v.numel() == 0:
        return 0.0
    total = float(v.sum())
    if not math.isfinite(total):
        return total
    slack = v.numel() * 2.0 ** -52 * float(v.abs().sum())        # float64 summation error bound
    mean = (total + slack if up else total - slack) / v.numel()
    return math.nextafter(mean, math.inf if up else -math.inf)

def _output_bounds(graph: LayerGraph, result: AGTResult, x_lo: Tensor, x_hi: Tensor, method: str):
    if method == "ibp":
        from pcert.runtime.bounds.ibp import ibp_layers
        return ibp_layers(graph, result.lower, result.upper, x_lo, x_hi)[-1]
    from pcert.runtime.bounds.forward import METHODS, bound_outputs
    if method not in METHODS:
        raise UserError(f"bounds: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return bound_outputs(graph, result.lower, result.upper, x_lo, x_hi, method)


def _robust_class(lo: Tensor, hi: Tensor, threshold: float | None) -> tuple[Tensor, Tensor]:
    """(class that every parameter/input in the box predicts, whether there is one) per [P, N]."""
    if threshold is not None:
        up, down = lo[..., 0] > threshold, hi[..., 0] <= threshold
        return up.long(), up | down
    c = lo.shape[-1]
    eye = torch.eye(c, dtype=torch.bool, device=lo.device)
    beats = lo.unsqueeze(-1) > hi.unsqueeze(-2)  # [.., i, j]: lo_i > hi_j
    wins = (beats | eye).all(-1)
    return wins.float().argmax(-1), wins.any(-1)


def certify(graph: LayerGraph, result: AGTResult, x_test, y_test, objective: Objective, *,
            method: str = "ibp", task: Literal["classification", "regression"] = "classification") -> Certificates:
    """Bound the outputs at every test point for every budget point and derive the metrics."""
    dtype = result.lower[0].dtype
    device = result.lower[0].device
    x = torch.as_tensor(np.asarray(x_test), dtype=dtype, device=device)
    if tuple(x.shape[1:]) != tuple(graph.input_shape):
        raise DataError(f"test data: per-sample shape {list(x.shape[1:])}, the model expects {list(graph.input_shape)}")
    if objective.kind not in ("targeted", "untargeted", "backdoor"):
        raise UserError(f"objective: unknown kind {objective.kind!r}")
    if objective.kind == "backdoor" and not objective.eps >= 0:
        raise UserError("objective: backdoor eps must be >= 0")
    y = torch.as_tensor(np.asarray(y_test), device=device)
    nominal_out = forward_point(graph, param_index(graph), result.nominal, x)[-1]
    if objective.kind == "backdoor":
        lo, hi = _output_bounds(graph, result, *input_box(x, objective.eps), method)  # l1/l2 balls lie in the box
        c_lo, c_hi = _output_bounds(graph, result, x, x, method)
    else:
        lo, hi = c_lo, c_hi = _output_bounds(graph, result, x, x, method)
    lo, hi = lo.reshape(*lo.shape[:2], -1), hi.reshape(*hi.shape[:2], -1)
    c_lo, c_hi = c_lo.reshape(*c_lo.shape[:2], -1), c_hi.reshape(*c_hi.shape[:2], -1)
    nom = nominal_out.reshape(x.shape[0], -1)
    p = lo.shape[0]
    u = unit_roundoff(dtype)
    metrics: list[dict[str, float]] = [{} for _ in range(p)]

    if task == "regression":
        yr = y.to(dtype).reshape(nom.shape)
        worst = torch.maximum((c_lo - yr) ** 2, (c_hi - yr) ** 2).mean(-1) * (1 + 8 * u)
        inside = (c_lo <= yr) & (yr <= c_hi)
        best = torch.where(inside, 0.0, torch.minimum((c_lo - yr) ** 2, (c_hi - yr) ** 2)).mean(-1) * (1 - 8 * u)
        nominal_mse = float(((nom - yr) ** 2).mean())
        certified = (torch.isfinite(lo) & torch.isfinite(hi)).all(-1)
        for q in range(p):
            metrics[q].update(worst_case_mse=mean_bound(torch.nan_to_num(worst[q], nan=math.inf), up=True),
                              best_case_mse=mean_bound(torch.nan_to_num(best[q], nan=0.0), up=False),
                              nominal_mse=nominal_mse)
        return Certificates(lo, hi, nom, nom, certified, metrics)

    yl = y.long().reshape(-1)
    threshold = None
    if nom.shape[-1] == 1:
        threshold = 0.5 if graph.layers[-1].op == "sigmoid" else 0.0
        pred = (nom[:, 0] > threshold).long()
    else:
        pred = nom.argmax(-1)
    robust_cls, robust = _robust_class(lo, hi, threshold)
    stable = robust & (robust_cls == pred)
    correct = pred == yl
    certified = stable & correct if objective.kind in ("targeted", "backdoor") else stable
    c_cls, c_rob = _robust_class(c_lo, c_hi, threshold)
    surely_correct = c_rob & (c_cls == yl)
    for q in range(p):
        m = metrics[q]
        m["nominal_accuracy"] = fraction(correct)
        m["certified_accuracy"] = fraction(certified[q] & correct)
        m["worst_case_accuracy"] = fraction(surely_correct[q])
        if objective.kind == "backdoor":
            m["backdoor_certified_accuracy"] = fraction(certified[q])
        if objective.classes is not None:
            for cls in objective.classes:
                sel = yl == cls
                if sel.any():
                    m[f"certified_accuracy_class_{cls}"] = fraction((certified[q] & correct)[sel])
    if objective.kind == "untargeted":
        if threshold is None:
            p_lo, _ = softmax_bounds(c_lo, c_hi)
            worst_ce = -torch.log(torch.gather(p_lo, -1, yl.view(1, -1, 1).expand(p, -1, 1)).squeeze(-1))
            nominal_ce = float(torch.nn.functional.cross_entropy(nom, yl))
        else:
            if threshold == 0.5:  # the output already is the probability
                s_lo, s_hi = c_lo[..., 0].clamp(0, 1), c_hi[..., 0].clamp(0, 1)
                worst_ce = torch.where(yl == 1, -torch.log(s_lo), -torch.log1p(-s_hi))
            else:  # -log sigmoid(-z) = softplus(z), in float64 to a few ulps (torch's softplus returns z above 20)
                z = torch.where(yl == 1, -c_lo[..., 0], c_hi[..., 0]).to(torch.float64)
                worst_ce = z.clamp(min=0) + torch.log1p(torch.exp(-z.abs()))
            logit = nom[:, 0] if threshold == 0.0 else torch.logit(nom[:, 0])
            nominal_ce = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, yl.to(dtype)))
        worst_ce = torch.nan_to_num(worst_ce, nan=math.inf) * (1 + 16 * u)
        for q in range(p):
            metrics[q]["worst_case_cross_entropy"] = mean_bound(worst_ce[q], up=True)
            metrics[q]["nominal_cross_entropy"] = nominal_ce
        if objective.metric == "mse":
            yr = torch.nn.functional.one_hot(yl, nom.shape[-1]).to(dtype) if threshold is None else yl.to(dtype).view(-1, 1)
            worst = torch.maximum((c_lo - yr) ** 2, (c_hi - yr) ** 2).mean(-1) * (1 + 8 * u)
            for q in range(p):
                metrics[q]["worst_case_mse"] = mean_bound(torch.nan_to_num(worst[q], nan=math.inf), up=True)
                metrics[q]["nominal_mse"] = float(((nom - yr) ** 2).mean())
    return Certificates(lo, hi, nom, pred, certified, metrics)
