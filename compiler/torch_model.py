"""Convert between pcert's LayerGraph and a plain ``torch.nn.Sequential``.

Plain SGD runs, parity checks against onnxruntime and the model builders all need the graph
as an ordinary torch module; trained weights then go back into a graph of the same structure.
Modules are positional (index i of the Sequential is layer i of the graph), so layer names
from ONNX files never have to be valid torch attribute names.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .graph import Layer, LayerGraph


class Reshape(nn.Module):
    """Reshape every sample to ``shape``, keeping the batch axis."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _module(layer: Layer, dtype: torch.dtype) -> nn.Module:
    if layer.op == "linear":
        out_f, in_f = layer.weight.shape
        mod: nn.Module = nn.Linear(in_f, out_f, bias=layer.bias is not None, dtype=dtype)
    elif layer.op == "conv2d":
        out_c, in_per_group, kh, kw = layer.weight.shape
        groups = int(layer.attrs.get("groups", 1))
        mod = nn.Conv2d(
            in_per_group * groups, out_c, (kh, kw),
            stride=tuple(layer.attrs.get("stride", (1, 1))),
            padding=tuple(layer.attrs.get("padding", (0, 0))),
            dilation=tuple(layer.attrs.get("dilation", (1, 1))),
            groups=groups, bias=layer.bias is not None, dtype=dtype,
        )
    elif layer.op in _ACTIVATIONS:
        return _ACTIVATIONS[layer.op]()
    elif layer.op == "flatten":
        return nn.Flatten()
    elif layer.op == "reshape":
        return Reshape(layer.attrs["shape"])
    else:  # pragma: no cover - LayerOp is closed
        raise ValueError(f"unknown layer op {layer.op!r}")
    with torch.no_grad():
        mod.weight.copy_(torch.as_tensor(np.asarray(layer.weight), dtype=dtype))
        if layer.bias is not None:
            mod.bias.copy_(torch.as_tensor(np.asarray(layer.bias), dtype=dtype))
    return mod


def to_torch(graph: LayerGraph, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A Sequential computing ``graph`` (batch axis first) with copies of its weights."""
    return nn.Sequential(*(_module(layer, dtype) for layer in graph.layers))


def from_torch(graph: LayerGraph, module: nn.Sequential) -> LayerGraph:
    """``graph`` with the weights of ``module`` (as built by :func:`to_torch`), float32 numpy."""
    if len(module) != len(graph.layers):
        raise ValueError(f"module has {len(module)} children, graph has {len(graph.layers)} layers")
    layers = []
    for layer, mod in zip(graph.layers, module):
        if not layer.is_parametric:
            layers.append(layer)
            continue
        expected = nn.Linear if layer.op == "linear" else nn.Conv2d
        if not isinstance(mod, expected) or tuple(mod.weight.shape) != layer.weight.shape:
            raise ValueError(f"layer {layer.name!r}: module {mod} does not match {layer.op} {layer.weight.shape}")
        weight = mod.weight.detach().cpu().numpy().astype(np.float32, copy=True)
        bias = None if mod.bias is None else mod.bias.detach().cpu().numpy().astype(np.float32, copy=True)
        layers.append(dataclasses.replace(layer, weight=weight, bias=bias))
    return LayerGraph(graph.input_shape, tuple(layers))


def graph_from_sequential(module: nn.Sequential, input_shape: Sequence[int], names: Sequence[str] | None = None) -> LayerGraph:
    """Describe a Sequential of supported modules as a LayerGraph (shapes found by a dry run).

    Biases are always materialised (zeros when the module has none), as everywhere in pcert.
    """
    shape = tuple(int(s) for s in input_shape)
    x = torch.zeros((1, *shape))
    layers = []
    for i, mod in enumerate(module):
        name = names[i] if names is not None else f"{type(mod).__name__.lower()}_{i}"
        with torch.no_grad():
            y = mod(x)
        out = tuple(y.shape[1:])
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            weight = mod.weight.detach().cpu().numpy().astype(np.float32, copy=True)
            bias = (np.zeros(weight.shape[0], np.float32) if mod.bias is None
                    else mod.bias.detach().cpu().numpy().astype(np.float32, copy=True))
            if isinstance(mod, nn.Linear):
                layers.append(Layer("linear", name, shape, out, weight, bias))
            else:
                if isinstance(mod.padding, str):
                    raise ValueError("string padding is not supported; give explicit integers")
                attrs = {"stride": tuple(mod.stride), "padding": tuple(mod.padding),
                         "dilation": tuple(mod.dilation), "groups": int(mod.groups)}
                layers.append(Layer("conv2d", name, shape, out, weight, bias, attrs))
        elif isinstance(mod, (nn.ReLU, nn.Sigmoid, nn.Tanh)):
            layers.append(Layer(type(mod).__name__.lower(), name, shape, out))  # type: ignore[arg-type]
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise ValueError("only nn.Flatten() with start_dim=1, end_dim=-1 is supported")
            layers.append(Layer("flatten", name, shape, out))
        elif isinstance(mod, Reshape):
            layers.append(Layer("reshape", name, shape, out, attrs={"shape": mod.shape}))
        else:
            raise ValueError(f"module {i} ({type(mod).__name__}) has no LayerGraph equivalent")
        x, shape = y, out
    return LayerGraph(tuple(int(s) for s in input_shape), tuple(layers))
