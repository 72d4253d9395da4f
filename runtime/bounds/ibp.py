"""Interval bound propagation through a LayerGraph with interval parameters (budget axis P first)."""
from __future__ import annotations

from torch import Tensor

from pcert.compiler.graph import Layer, LayerGraph

from .interval import Bounds, activation_bounds, conv2d_bounds, linear_bounds


def param_index(graph: LayerGraph) -> dict[int, tuple[int, int | None]]:
    """Layer index -> (weight slot, bias slot or None) in the flat list [W0, b0, W1, b1, ...]."""
    slots: dict[int, tuple[int, int | None]] = {}
    n = 0
    for i, layer in enumerate(graph.layers):
        if layer.is_parametric:
            has_bias = layer.bias is not None
            slots[i] = (n, n + 1 if has_bias else None)
            n += 2 if has_bias else 1
    return slots


def reshape_bounds(layer: Layer, lo: Tensor, hi: Tensor) -> Bounds:
    """flatten / reshape keep the leading [P, N] axes."""
    lead = lo.shape[: lo.dim() - len(layer.in_shape)]
    if lo is hi:
        r = lo.reshape(*lead, *layer.out_shape)
        return r, r
    return lo.reshape(*lead, *layer.out_shape), hi.reshape(*lead, *layer.out_shape)


def layer_bounds(layer: Layer, w: Bounds | None, b: Bounds | None, lo: Tensor, hi: Tensor) -> Bounds:
    """Bounds of one layer's output for inputs in [lo, hi] and parameters in w, b."""
    b_lo, b_hi = b if b is not None else (None, None)
    if layer.op == "linear":
        return linear_bounds(lo, hi, w[0], w[1], b_lo, b_hi)
    if layer.op == "conv2d":
        a = layer.attrs
        return conv2d_bounds(lo, hi, w[0], w[1], b_lo, b_hi, tuple(a.get("stride", (1, 1))),
                             tuple(a.get("padding", (0, 0))), tuple(a.get("dilation", (1, 1))),
                             int(a.get("groups", 1)))
    if layer.op in ("flatten", "reshape"):
        return reshape_bounds(layer, lo, hi)
    return activation_bounds(layer.op, lo, hi)


def ibp_layers(graph: LayerGraph, params_lo: list[Tensor], params_hi: list[Tensor],
               x_lo: Tensor, x_hi: Tensor, start: int = 0) -> list[Bounds]:
    """Bounds of every layer's output (index i = output of graph.layers[i]), leading budget axis P.

    params_* are [P, *shape] in the order [W0, b0, W1, b1, ...]; x_* are [N, *in] (shared by all
    points) or [P, N, *in]. Pass the same tensor as x_lo and x_hi for an exact input: the
    radius products are then skipped. ``start`` begins at layer ``start`` (x is that layer's input).
    """
    slots = param_index(graph)
    out: list[Bounds] = []
    lo, hi = x_lo, x_hi
    p = params_lo[0].shape[0] if params_lo else 1
    for i in range(start, len(graph.layers)):
        layer = graph.layers[i]
        w = b = None
        if i in slots:
            wi, bi = slots[i]
            w = (params_lo[wi], params_hi[wi])
            b = (params_lo[bi], params_hi[bi]) if bi is not None else None
        lo, hi = layer_bounds(layer, w, b, lo, hi)
        if lo.dim() == len(layer.out_shape) + 1:  # no budget axis yet (parameter-free prefix)
            same = lo is hi
            lo = lo.unsqueeze(0).expand(p, *lo.shape)
            hi = lo if same else hi.unsqueeze(0).expand(p, *hi.shape)
        out.append((lo, hi))
    return out
