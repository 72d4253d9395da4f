"""pcert's own layer graph: the sequential network that the runtime trains and bounds.

The ONNX importer lowers a model to this form (Gemm/MatMul+Add -> linear, BatchNorm folded,
Identity dropped). Shapes are per sample (no batch axis). Weights follow torch conventions:
linear weight [out, in] (y = x W^T + b); conv2d weight [out_c, in_c / groups, kh, kw].
Parametric layers are ``linear`` and ``conv2d``; ``frozen: k`` in a spec freezes the first k.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

LayerOp = Literal["linear", "conv2d", "relu", "sigmoid", "tanh", "flatten", "reshape"]
PARAMETRIC_OPS = ("linear", "conv2d")


@dataclass(frozen=True)
class Layer:
    op: LayerOp
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    # conv2d attrs: stride (sh, sw), padding (ph, pw), dilation (dh, dw), groups
    # reshape attrs: shape (per-sample target shape)

    @property
    def is_parametric(self) -> bool:
        return self.op in PARAMETRIC_OPS

    def num_params(self) -> int:
        return sum(int(a.size) for a in (self.weight, self.bias) if a is not None)


@dataclass(frozen=True)
class LayerGraph:
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].out_shape if self.layers else self.input_shape

    @property
    def parametric_layers(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.is_parametric)

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description (no weights) for plans and reports."""
        return {
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "num_params": self.num_params(),
            "layers": [
                {
                    "op": layer.op,
                    "name": layer.name,
                    "in_shape": list(layer.in_shape),
                    "out_shape": list(layer.out_shape),
                    "params": layer.num_params(),
                    **({"attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in layer.attrs.items()}} if layer.attrs else {}),
                }
                for layer in self.layers
            ],
        }
