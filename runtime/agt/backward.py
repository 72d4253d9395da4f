"""Backward passes (AGT App. F): nominal gradients and interval bounds on per-sample gradients.

A parametric layer's per-sample weight gradient is a product of two factors,
dW_i = G_i @ X_i^T summed over L positions, with G_i = dL/d(layer output) arranged
[P, b, groups, out/groups, L] and X_i = the layer input arranged [P, b, groups, K, L]
(linear: groups = L = 1; conv: X is the unfolded input, K = in/groups * kh * kw). Keeping the
factors (instead of b x |theta| per-sample tensors) lets batch sums run as one matmul; only the
poisoning top-k needs per-sample values, built chunk by chunk in ``descent``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pcert.compiler.graph import Layer, LayerGraph
from pcert.runtime.bounds.interval import (Bounds, activation_grad_bounds, conv2d_input_grad_bounds,
                                           matmul_bounds, mul_bounds, outward, up)

from .losses import softmax_sum_slack


def _conv_attrs(layer: Layer):
    a = layer.attrs
    return (tuple(a.get("stride", (1, 1))), tuple(a.get("padding", (0, 0))),
            tuple(a.get("dilation", (1, 1))), int(a.get("groups", 1)))


def g_factor(layer: Layer, g: Tensor) -> Tensor:
    """dL/d(output) [P, b, out, (H', W')] -> [P, b, groups, out/groups, L]."""
    p, b = g.shape[:2]
    groups = _conv_attrs(layer)[3] if layer.op == "conv2d" else 1
    return g.reshape(p, b, groups, layer.out_shape[0] // groups, -1)


def x_factor(layer: Layer, x: Tensor) -> Tensor:
    """Layer input [P, b, *in] -> [P, b, groups, K, L] (conv: unfolded patches)."""
    p, b = x.shape[:2]
    if layer.op == "linear":
        return x.reshape(p, b, 1, -1, 1)
    stride, padding, dilation, groups = _conv_attrs(layer)
    kh, kw = layer.weight.shape[2:]
    u = F.unfold(x.reshape(p * b, *x.shape[2:]), (kh, kw), dilation, padding, stride)
    return u.reshape(p, b, groups, -1, u.shape[-1])


@dataclass
class Factors:
    """Bounds of both gradient factors of one trainable layer (x_lo is x_hi for an exact input)."""

    g_lo: Tensor
    g_hi: Tensor
    x_lo: Tensor
    x_hi: Tensor


def _factorize(layer: Layer, g: Bounds, x: Bounds) -> Factors:
    x_lo = x_factor(layer, x[0])
    x_hi = x_lo if x[0] is x[1] else x_factor(layer, x[1])
    return Factors(g_factor(layer, g[0]), g_factor(layer, g[1]), x_lo, x_hi)


def _relu_grad(z_lo: Tensor, z_hi: Tensor, g_lo: Tensor, g_hi: Tensor) -> Bounds:
    """Heaviside(z) * g, exactly: 1 where z > 0 surely, 0 where z <= 0 surely, hull with 0 otherwise."""
    on, off = z_lo > 0, z_hi <= 0
    zero = torch.zeros((), dtype=g_lo.dtype, device=g_lo.device)
    lo = torch.where(on, g_lo, torch.where(off, zero, torch.minimum(g_lo, zero)))
    hi = torch.where(on, g_hi, torch.where(off, zero, torch.maximum(g_hi, zero)))
    return lo, hi


def backward_bounds(graph: LayerGraph, slots: dict[int, tuple[int, int | None]], start: int, top: int,
                    fwd: list[Bounds], x_in: Bounds, plo: list[Tensor], phi: list[Tensor],
                    g_top: Bounds, sum_zero: bool = False) -> dict[int, Factors]:
    """Interval backward from the output of layer ``top`` down to layer ``start``.

    fwd[i - start] bounds the output of layer i, x_in the input of layer ``start``; g_top bounds
    dL/d(output of layer top). Returns the gradient factors of every parametric layer.
    ``sum_zero``: the true dL/dz sums to 0 over classes (softmax cross-entropy, one-hot labels), so
    W^T g = (W - 1 w_C^T)^T g drops the last class; this keeps the two-class coupling intervals lose.
    A float evaluation of g sums to nearly 0 (``losses.softmax_sum_slack``), whose term is added.
    """
    out: dict[int, Factors] = {}
    g_lo, g_hi = g_top
    for i in range(top, start - 1, -1):
        layer = graph.layers[i]
        inp = fwd[i - 1 - start] if i > start else x_in
        if layer.is_parametric:
            out[i] = _factorize(layer, (g_lo, g_hi), inp)
            if i == start:
                break
            wi = slots[i][0]
            w_lo, w_hi = plo[wi], phi[wi]
            if layer.op == "linear":
                slack = None
                if sum_zero and i == top and w_lo.shape[-2] > 1:
                    # a float run's g sums to s, |s| <= softmax_sum_slack, not to 0: W^T g gains w_C s
                    w_last = torch.maximum(w_lo[..., -1:, :].abs(), w_hi[..., -1:, :].abs())  # [P, 1, in]
                    slack = up(softmax_sum_slack(*fwd[i - start]) * w_last)
                    w_lo, w_hi = w_lo[..., :-1, :] - w_hi[..., -1:, :], w_hi[..., :-1, :] - w_lo[..., -1:, :]
                    w_lo, w_hi = outward(w_lo, w_hi)
                    g_lo, g_hi = g_lo[..., :-1], g_hi[..., :-1]
                g_lo, g_hi = matmul_bounds(g_lo, g_hi, w_lo.transpose(-1, -2), w_hi.transpose(-1, -2))
                if slack is not None:
                    g_lo, g_hi = outward(g_lo - slack, g_hi + slack)
            else:
                g_lo, g_hi = conv2d_input_grad_bounds(g_lo, g_hi, w_lo, w_hi, layer.in_shape[1:], *_conv_attrs(layer))
        elif layer.op == "relu":
            g_lo, g_hi = _relu_grad(inp[0], inp[1], g_lo, g_hi)
        elif layer.op in ("sigmoid", "tanh"):
            d_lo, d_hi = activation_grad_bounds(layer.op, *inp)
            g_lo, g_hi = mul_bounds(d_lo, d_hi, g_lo, g_hi)
        else:  # flatten / reshape
            shape = (*g_lo.shape[:2], *layer.in_shape)
            g_lo, g_hi = g_lo.reshape(shape), g_hi.reshape(shape)
    return out


def forward_point(graph: LayerGraph, slots, params: list[Tensor], x: Tensor, start: int = 0) -> list[Tensor]:
    """Plain forward pass (no budget axis) returning every layer's output from layer ``start`` on."""
    outs = []
    h = x
    for i in range(start, len(graph.layers)):
        layer = graph.layers[i]
        if layer.is_parametric:
            wi, bi = slots[i]
            w, b = params[wi], (params[bi] if bi is not None else None)
            h = F.linear(h, w, b) if layer.op == "linear" else F.conv2d(h, w, b, *_conv_attrs(layer))
        elif layer.op == "relu":
            h = torch.relu(h)
        elif layer.op == "sigmoid":
            h = torch.sigmoid(h)
        elif layer.op == "tanh":
            h = torch.tanh(h)
        else:
            h = h.reshape(h.shape[0], *layer.out_shape)
        outs.append(h)
    return outs


def backward_point(graph: LayerGraph, slots, start: int, top: int, outs: list[Tensor], x_in: Tensor,
                   params: list[Tensor], g: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
    """Nominal backward (the same recurrences as autograd); returns per layer the (G, X) factors, P = 1."""
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for i in range(top, start - 1, -1):
        layer = graph.layers[i]
        inp = outs[i - 1 - start] if i > start else x_in
        if layer.is_parametric:
            out[i] = (g_factor(layer, g[None]), x_factor(layer, inp[None]))
            if i == start:
                break
            w = params[slots[i][0]]
            if layer.op == "linear":
                g = g @ w
            else:
                g = torch.nn.grad.conv2d_input(inp.shape, w, g, *_conv_attrs(layer))
        elif layer.op == "relu":
            g = g * (inp > 0).to(g.dtype)
        elif layer.op == "sigmoid":
            s = outs[i - start]
            g = g * (1 - s) * s
        elif layer.op == "tanh":
            t = outs[i - start]
            g = g * (1 - t * t)
        else:
            g = g.reshape(g.shape[0], *layer.in_shape)
    return out
