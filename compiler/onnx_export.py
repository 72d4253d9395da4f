"""Write a LayerGraph as a clean ONNX model (opset 17, dynamic batch axis).

Used to ship example models and to hand trained weights back to other tools. One ONNX node
per layer: Gemm (transB=1, torch weight layout kept), Conv, Relu/Sigmoid/Tanh, Flatten and
Reshape (shape ``[0, *per_sample]``, so the batch axis is copied). Biases are always written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import LayerGraph

OPSET = 17
_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def graph_to_onnx(graph: LayerGraph, name: str = "pcert") -> bytes:
    """Serialised ONNX model computing ``graph``; checked with ``onnx.checker``."""
    nodes, inits = [], []
    current = "input"
    for i, layer in enumerate(graph.layers):
        out = "output" if i == len(graph.layers) - 1 else f"{layer.name}_out"
        if layer.is_parametric:
            w, b = f"{layer.name}.weight", f"{layer.name}.bias"
            inits.append(numpy_helper.from_array(np.asarray(layer.weight, np.float32), w))
            bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0], np.float32)
            inits.append(numpy_helper.from_array(np.asarray(bias, np.float32), b))
            if layer.op == "linear":
                nodes.append(helper.make_node("Gemm", [current, w, b], [out], name=layer.name, transB=1))
            else:
                sh, sw = layer.attrs.get("stride", (1, 1))
                ph, pw = layer.attrs.get("padding", (0, 0))
                nodes.append(helper.make_node(
                    "Conv", [current, w, b], [out], name=layer.name,
                    kernel_shape=list(layer.weight.shape[2:]), strides=[sh, sw], pads=[ph, pw, ph, pw],
                    dilations=list(layer.attrs.get("dilation", (1, 1))), group=int(layer.attrs.get("groups", 1)),
                ))
        elif layer.op in _ACTIVATIONS:
            nodes.append(helper.make_node(_ACTIVATIONS[layer.op], [current], [out], name=layer.name))
        elif layer.op == "flatten":
            nodes.append(helper.make_node("Flatten", [current], [out], name=layer.name, axis=1))
        elif layer.op == "reshape":
            shape = f"{layer.name}.shape"
            inits.append(numpy_helper.from_array(np.array([0, *layer.attrs["shape"]], np.int64), shape))
            nodes.append(helper.make_node("Reshape", [current, shape], [out], name=layer.name))
        else:  # pragma: no cover - LayerOp is closed
            raise ValueError(f"unknown layer op {layer.op!r}")
        current = out
    if not graph.layers:
        nodes.append(helper.make_node("Identity", ["input"], ["output"], name="identity"))
    onnx_graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *graph.input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *graph.output_shape])],
        initializer=inits,
    )
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pcert")
    model.ir_version = 8  # opset 17 needs IR >= 8; keeps files readable by older runtimes
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def save_onnx(graph: LayerGraph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` as ONNX; returns the path."""
    path = Path(path)
    path.write_bytes(graph_to_onnx(graph, name=path.stem))
    return path
