"""The forward-bounds front door: one call that training, certification and checking share.

Methods: "ibp" (interval bound propagation), "crown" (CROWN with interval parameters; its
intermediate bounds are already intersected with IBP steps, its output is pure CROWN) and
"crown+ibp" (element-wise tightest of both at every layer: sound because each is).
"""
from __future__ import annotations

import torch
from torch import Tensor

from pcert.compiler.graph import LayerGraph
from pcert.runtime.bounds.crown import crown_layers
from pcert.runtime.bounds.ibp import ibp_layers

METHODS = ("ibp", "crown", "crown+ibp")


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; expected one of {', '.join(METHODS)}")


def bound_layers(graph: LayerGraph, params_lo: list[Tensor], params_hi: list[Tensor],
                 x_lo: Tensor, x_hi: Tensor, method: str = "ibp") -> list[tuple[Tensor, Tensor]]:
    """Bounds of every layer's output (index i = output of graph.layers[i]), [P, N, *out_shape].

    params_* are [W0, b0, W1, b1, ...] with leading budget axis P; x_* are [N, *in_shape] or
    [P, N, *in_shape]."""
    _check(method)
    if method == "ibp":
        return ibp_layers(graph, params_lo, params_hi, x_lo, x_hi)
    crown = crown_layers(graph, params_lo, params_hi, x_lo, x_hi, tighten_output=method == "crown+ibp")
    if method == "crown":
        return crown
    ibp = ibp_layers(graph, params_lo, params_hi, x_lo, x_hi)
    return [(torch.maximum(c[0], i[0]), torch.minimum(c[1], i[1])) for c, i in zip(crown, ibp)]


def bound_outputs(graph: LayerGraph, params_lo: list[Tensor], params_hi: list[Tensor],
                  x_lo: Tensor, x_hi: Tensor, method: str = "ibp") -> tuple[Tensor, Tensor]:
    """Bounds of the network output [P, N, *out_shape] for every x in [x_lo, x_hi] and every
    parameter in [params_lo, params_hi]. A graph without layers returns the input box."""
    _check(method)
    if not graph.layers:
        return (x_lo, x_hi) if x_lo.dim() > len(graph.input_shape) + 1 else (x_lo[None], x_hi[None])
    return bound_layers(graph, params_lo, params_hi, x_lo, x_hi, method)[-1]
