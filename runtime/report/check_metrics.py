"""Decision rules and metric recomputation for the independent check (single models).

Every recomputed metric is an interval of acceptable stored values:
- counts of flags (``*accuracy*``) are exact (up to float32 formatting, ``ACC_TOL``);
- ``worst_case_*`` losses are upper bounds: a stored value below the exact worst case over the
  stored output box is unsound (tolerance ``SOUND_RTOL``); a slightly larger one is the engine's
  outward rounding (up to ``LOOSE_RTOL``/``LOOSE_ATOL``);
- ``best_case_*`` losses mirror that; ``nominal_*`` values agree two-sided within the loose bound;
- ``worst_case_accuracy`` lies between the strict and the tie-aware reading of the clean bounds.
Losses use the clean (trigger-free) bounds; for backdoor runs the checker recomputes them.
NaN worst cases read as +inf and NaN best cases as 0, as in the engine.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

ACC_TOL = 1e-6
SOUND_RTOL, SOUND_ATOL = 1e-5, 1e-7
LOOSE_RTOL, LOOSE_ATOL = 1e-4, 1e-4

Range = tuple[float, float]
MetricFn = Callable[[int], Range]


def sure(lo: np.ndarray, hi: np.ndarray, target: np.ndarray, *, tie_wins: bool, threshold: float = 0.0) -> np.ndarray:
    """[P, N]: is ``target`` provably the decision for every output in [lo, hi] ([P, N, C])?

    Argmax ties go to the smaller class index: ``tie_wins=True`` applies that rule exactly,
    ``False`` demands strict separation. One output: class 1 means output > ``threshold``.
    NaN is never sure.
    """
    if lo.shape[-1] == 1:
        z_lo, z_hi = lo[..., 0], hi[..., 0]
        zero = (z_hi <= threshold) if tie_wins else (z_hi < threshold)
        return np.where(target[None, :] == 1, z_lo > threshold, zero)
    index = np.broadcast_to(target[None, :, None].astype(np.int64), lo.shape[:2] + (1,))
    t_lo = np.take_along_axis(lo, index, axis=2)
    classes = np.arange(lo.shape[-1])[None, None, :]
    beats = t_lo > hi
    if tie_wins:
        beats = beats | ((t_lo >= hi) & (classes > target[None, :, None]))
    beats = beats | (classes == target[None, :, None])
    return beats.all(axis=2) & ~np.isnan(lo).any(axis=2) & ~np.isnan(hi).any(axis=2)


def predict(out: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    return (out[..., 0] > threshold).astype(np.int64) if out.shape[-1] == 1 else out.argmax(axis=-1)


def exact(v: float) -> Range:
    return (v - ACC_TOL, v + ACC_TOL)


def upper_bound(v: float) -> Range:
    v = math.inf if math.isnan(v) else v
    if math.isinf(v):
        return (v, v)
    return (v - SOUND_RTOL * abs(v) - SOUND_ATOL, v + LOOSE_RTOL * abs(v) + LOOSE_ATOL)


def lower_bound(v: float) -> Range:
    v = 0.0 if math.isnan(v) else v
    return (v - LOOSE_RTOL * abs(v) - LOOSE_ATOL, v + SOUND_RTOL * abs(v) + SOUND_ATOL)


def near(v: float) -> Range:
    if not math.isfinite(v):
        return (v, v)
    return (v - LOOSE_RTOL * abs(v) - LOOSE_ATOL, v + LOOSE_RTOL * abs(v) + LOOSE_ATOL)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


@dataclass
class SingleRun:
    """What the metrics are computed from (float64 copies of the stored arrays)."""

    task: str
    kind: str                    # objective kind
    lo: np.ndarray               # [P, N, C] stored bounds (box for backdoor)
    hi: np.ndarray
    clean_lo: np.ndarray         # [P, N, C] bounds at the test points themselves
    clean_hi: np.ndarray
    nominal: np.ndarray          # [N, C]
    y: np.ndarray
    prediction: np.ndarray
    flags: np.ndarray            # [P, N] bool
    threshold: float             # one-output decision threshold (0 logits, 0.5 sigmoid outputs)
    sigmoid_output: bool


def _losses(r: SingleRun) -> dict[str, MetricFn]:
    lo, hi, nom = r.clean_lo, r.clean_hi, r.nominal
    if r.task == "regression":
        t = r.y.astype(np.float64).reshape(nom.shape)
        return {
            "worst_case_mse": lambda p: upper_bound(float(np.maximum((lo[p] - t) ** 2, (hi[p] - t) ** 2).mean())),
            "best_case_mse": lambda p: lower_bound(float((np.maximum(np.maximum(lo[p] - t, t - hi[p]), 0) ** 2).mean())),
            "nominal_mse": lambda p: near(float(((nom - t) ** 2).mean())),
        }
    y = r.y.astype(np.int64)
    rows = np.arange(len(y))
    if nom.shape[-1] == 1:
        if r.sigmoid_output:
            neg_log = lambda q: -np.log(np.clip(q, 0.0, 1.0))
            worst = lambda p: np.where(y == 1, neg_log(lo[p, :, 0]), neg_log(1 - hi[p, :, 0]))
            nominal_ce = np.where(y == 1, neg_log(nom[:, 0]), neg_log(1 - nom[:, 0])).mean()
        else:
            worst = lambda p: np.where(y == 1, _softplus(-lo[p, :, 0]), _softplus(hi[p, :, 0]))
            nominal_ce = np.where(y == 1, _softplus(-nom[:, 0]), _softplus(nom[:, 0])).mean()
        target = y.astype(np.float64)[:, None]
    else:
        def worst(p: int) -> np.ndarray:            # the worst logits sit at a vertex of the box
            z = hi[p].copy()
            z[rows, y] = lo[p][rows, y]
            return np.logaddexp.reduce(z, axis=1) - z[rows, y]
        nominal_ce = (np.logaddexp.reduce(nom, axis=1) - nom[rows, y]).mean()
        target = np.eye(nom.shape[-1])[y]
    return {
        "worst_case_cross_entropy": lambda p: upper_bound(float(np.nan_to_num(worst(p), nan=np.inf).mean())),
        "nominal_cross_entropy": lambda p: near(float(nominal_ce)),
        "worst_case_mse": lambda p: upper_bound(float(np.maximum((lo[p] - target) ** 2, (hi[p] - target) ** 2).mean())),
        "nominal_mse": lambda p: near(float(((nom - target) ** 2).mean())),
    }


def single_metrics(r: SingleRun) -> Callable[[str], MetricFn | None]:
    """Metric name -> recomputation at point p (None: no independent recomputation)."""
    table = _losses(r)
    if r.task == "classification":
        y = r.y.astype(np.int64)
        correct = r.prediction == y
        strict = sure(r.clean_lo, r.clean_hi, y, tie_wins=False, threshold=r.threshold)
        loose = sure(r.clean_lo, r.clean_hi, y, tie_wins=True, threshold=r.threshold)
        table.update({
            "nominal_accuracy": lambda p: exact(float(correct.mean())),
            "certified_accuracy": lambda p: exact(float((r.flags[p] & correct).mean())),
            "worst_case_accuracy": lambda p: (float(strict[p].mean()) - ACC_TOL, float(loose[p].mean()) + ACC_TOL),
        })
        if r.kind == "backdoor":
            table["backdoor_certified_accuracy"] = lambda p: exact(float(r.flags[p].mean()))

    def lookup(name: str) -> MetricFn | None:
        match = re.fullmatch(r"certified_accuracy_class_(\d+)", name)
        if match and r.task == "classification":
            sel = r.y.astype(np.int64) == int(match.group(1))
            return lambda p: exact(float(r.flags[p][sel].mean())) if sel.any() else (math.nan, math.nan)
        return table.get(name)
    return lookup
