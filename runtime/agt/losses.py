"""Loss gradients w.r.t. the network output: nominal values and sound bounds (AGT App. E).

Per-sample losses (the batch loss is their mean): mse = mean over outputs of (z - y)^2,
cross_entropy = -log softmax(z)_y, binary_cross_entropy = BCE(sigmoid(z), y) on one logit z
(when the graph ends with a sigmoid, z is that sigmoid's input).
Label models: exact labels; flipping (label_norm "0") to any class, or, with label_classes, to
one of those classes only; label_norm "inf" moves each label coordinate by at most nu.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pcert.runtime.bounds.interval import Bounds, outward, sanitize, unit_roundoff, widen


@dataclass(frozen=True)
class LabelModel:
    """What a poisoned label may be: flip (norm "0", optional target classes) or inf-ball of radius nu.

    ``strict``: the poisoned label differs from the true one (a point whose label stays is simply
    not poisoned; the descent bound already lets the adversary poison fewer points).
    """

    norm: str = "0"
    nu: float = 0.0
    classes: tuple[int, ...] | None = None
    strict: bool = False


def _onehot(y: Tensor, c: int, dtype) -> Tensor:
    return F.one_hot(y.long(), c).to(dtype)


def loss_grad(loss: str, z: Tensor, y: Tensor) -> Tensor:
    """dL_i/dz_i per sample (not divided by the batch size); z [..., C]."""
    if loss == "mse":
        return (z - y.reshape(z.shape)) * (2.0 / z.shape[-1])
    if loss == "cross_entropy":
        return torch.softmax(z, -1) - _onehot(y, z.shape[-1], z.dtype)
    return torch.sigmoid(z) - y.reshape(z.shape).to(z.dtype)


def softmax_rounding(lo: Tensor, hi: Tensor) -> Tensor:
    """Relative error bound [..., 1] of any float evaluation of softmax at logits in [lo, hi], ours
    (``softmax_bounds``) or a training run's (in the covered dtype): a few ulps per class for the sums,
    exp and division, plus the logit differences every algorithm forms (z_j - z_i or z_j - max z),
    whose rounding, up to u times their size, exp turns into relative error. Their size is at most
    the spread max_j hi_j - min_j lo_j; counted 16-fold."""
    u = unit_roundoff(lo.dtype)
    spread = hi.amax(-1, keepdim=True) - lo.amin(-1, keepdim=True)
    return u * (4 * lo.shape[-1] + 16 + 16 * spread)


def softmax_sum_slack(lo: Tensor, hi: Tensor) -> Tensor:
    """A bound [..., 1] on |sum_c g_c| for any float evaluation of g = softmax(z) - onehot at logits in
    [lo, hi] (exactly 0 in exact arithmetic): sum_c |p^_c - p_c| <= rho sum_c p_c = rho, plus the
    rounding of p_y - 1 and of the loss's 1/b scaling (u each, per sample)."""
    return softmax_rounding(lo, hi) + 4 * unit_roundoff(lo.dtype)


def softmax_bounds(lo: Tensor, hi: Tensor) -> Bounds:
    """p_i in [1 / sum_j exp(hi_j - lo_i), 1 / sum_j exp(lo_j - hi_i)], the j = i term being exactly 1,
    widened by ``softmax_rounding`` (our evaluation's error and any float run's)."""
    lo, hi = sanitize(lo, hi)
    c = lo.shape[-1]
    eye = torch.eye(c, dtype=torch.bool, device=lo.device)
    m_lo = torch.where(eye, 0.0, hi.unsqueeze(-2) - lo.unsqueeze(-1))  # [.., i, j] = hi_j - lo_i
    m_hi = torch.where(eye, 0.0, lo.unsqueeze(-2) - hi.unsqueeze(-1))
    p_lo = torch.exp(-torch.logsumexp(m_lo, -1))
    p_hi = torch.exp(-torch.logsumexp(m_hi, -1))
    p_lo, p_hi = widen(p_lo, p_hi, softmax_rounding(lo, hi))
    p_lo = torch.nan_to_num(p_lo, nan=0.0)
    p_hi = torch.nan_to_num(p_hi, nan=1.0)
    return p_lo.clamp(0.0, 1.0), p_hi.clamp(0.0, 1.0)


def _label_range(y: Tensor, c: int, dtype, model: LabelModel | None, loss: str) -> Bounds:
    """Bounds of the (one-hot or real) label vector the loss subtracts."""
    if loss == "binary_cross_entropy":
        base = y.reshape(-1, 1).to(dtype)
        if model is None:
            return base, base
        if model.norm == "inf":
            return base - model.nu, base + model.nu
        allowed = torch.zeros(2, dtype=torch.bool, device=y.device)
        allowed[list(model.classes) if model.classes is not None else [0, 1]] = True
        if model.strict:
            flipped = 1 - base
            t = torch.where(allowed[flipped.long()], flipped, base)
            return t, t
        lo = torch.where(allowed[0], torch.zeros_like(base), base)
        hi = torch.where(allowed[1], torch.ones_like(base), base)
        return lo, hi
    if loss == "mse":
        base = y.reshape(y.shape[0], c).to(dtype)
        nu = model.nu if model is not None else 0.0
        return base - nu, base + nu
    base = _onehot(y, c, dtype)
    if model is None:
        return base, base
    if model.norm == "inf":
        return base - model.nu, base + model.nu
    allowed = torch.ones(c, dtype=torch.bool, device=y.device)
    if model.classes is not None:
        allowed = torch.zeros(c, dtype=torch.bool, device=y.device)
        allowed[list(model.classes)] = True
    mask = base.bool() | allowed  # possible targets per sample
    if model.strict:
        flips = allowed & ~base.bool()
        mask = torch.where(flips.any(-1, keepdim=True), flips, base.bool())
    only = mask & (mask.sum(-1, keepdim=True) == 1)
    return only.to(dtype), mask.to(dtype)


def loss_grad_bounds(loss: str, z_lo: Tensor, z_hi: Tensor, y: Tensor, model: LabelModel | None = None) -> Bounds:
    """Bounds of dL/dz for z in [z_lo, z_hi] ([..., b, C]) and any label the model allows."""
    c = z_lo.shape[-1]
    y_lo, y_hi = _label_range(y, c, z_lo.dtype, model, loss)
    if loss == "mse":
        s = 2.0 / c
        lo, hi = outward((z_lo - y_hi) * s, (z_hi - y_lo) * s)
        return widen(lo, hi, 4 * unit_roundoff(z_lo.dtype))
    if loss == "cross_entropy":
        p_lo, p_hi = softmax_bounds(z_lo, z_hi)
    else:
        p_lo, p_hi = widen(torch.sigmoid(z_lo), torch.sigmoid(z_hi), 8 * unit_roundoff(z_lo.dtype))
    return outward(p_lo - y_hi, p_hi - y_lo)
