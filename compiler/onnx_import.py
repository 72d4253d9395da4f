"""Import an ONNX model as pcert's sequential LayerGraph, or say exactly why it cannot be.

AGT bounds a fixed sequence of affine layers and monotone activations, so the importer
accepts a single chain of nodes from the one input to the one output and lowers it:
Gemm / MatMul (+ constant Add) -> linear, Conv -> conv2d, BatchNormalization (inference)
folded into the preceding linear/conv, Identity and inference-mode Dropout dropped.
Folding is done in float64 and rounded to float32 once. Every failure is a ``ModelError``
with one message; unsupported operators are all listed together so one edit fixes them all.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from pcert.errors import ModelError

from .graph import Layer, LayerGraph

SUPPORTED_OPS = (
    "Gemm", "MatMul", "Add", "Conv", "BatchNormalization", "Relu", "Sigmoid", "Tanh",
    "Flatten", "Reshape", "Identity", "Dropout", "Constant",
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}
_FLOAT_TYPES = (np.float16, np.float32, np.float64)
_WEIGHT_SLOTS = {"Gemm": (1, 2), "MatMul": (1,), "Conv": (1, 2), "BatchNormalization": (1, 2, 3, 4)}


@dataclass(frozen=True)
class ImportedModel:
    graph: LayerGraph
    sha256: str   # of the file bytes (then its external-data files, if any)
    opset: int    # default-domain opset of the file


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _external_files(model: onnx.ModelProto) -> list[str]:
    return sorted({entry.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                   for entry in t.external_data if entry.key == "location"})


def _digest(path: Path, raw: bytes, external: list[str]) -> str:
    """sha256 of the file bytes, followed by those of its external-data files (if any)."""
    h = hashlib.sha256(raw)
    for name in external:
        h.update((path.parent / name).read_bytes())
    return h.hexdigest()


def _load(path: Path) -> tuple[onnx.ModelProto, str]:
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    raw = path.read_bytes()
    try:
        model = onnx.load_model_from_string(raw)
        external = _external_files(model)
        if external:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
        sha = _digest(path, raw, external)
    except Exception as exc:  # protobuf DecodeError, ValidationError, missing data file: all mean "unusable file"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model file {path} is not a valid ONNX model: {first}") from None
    return model, sha


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if imp.domain == "ai.onnx" else imp.domain): imp.version for imp in model.opset_import}


def _check_supported(model: onnx.ModelProto, opsets: dict[str, int]) -> None:
    bad = []
    for node in model.graph.node:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        if domain or node.op_type not in SUPPORTED_OPS:
            op = f"{domain}::{node.op_type}" if domain else node.op_type
            bad.append(f"node '{_node_name(node)}' ({op}, opset {opsets.get(domain, '?')})")
    if bad:
        raise ModelError(f"unsupported operators: {', '.join(bad)}; supported: {', '.join(SUPPORTED_OPS)}")


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None or attr.name not in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        raise ModelError(f"node '{_node_name(node)}' (Constant): only tensor, float(s) and int(s) values are supported")
    value = helper.get_attribute_value(attr)
    return numpy_helper.to_array(value) if attr.name == "value" else np.asarray(value)


class _Lowering:
    """Walks the node chain once, appending layers and tracking the per-sample shape."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.consumers: dict[str, int] = {}
        for node in g.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        for out in g.output:
            self.consumers[out.name] = self.consumers.get(out.name, 0) + 1
        inputs = [i for i in g.input if i.name not in self.consts]
        self._check_io(g, inputs)
        self.input_name, self.output_name = inputs[0].name, g.output[0].name
        self.batch, self.input_shape = self._input_shape(inputs[0])
        self.current, self.shape = self.input_name, self.input_shape
        self.layers: list[Layer] = []
        self.fusable = False  # the last layer is linear/conv with nothing in between

    # --- checks on the whole graph -------------------------------------------------------
    def _check_io(self, g: onnx.GraphProto, inputs: list) -> None:
        if len(inputs) != 1:
            extra = {i.name for i in inputs}
            for node in g.node:
                for slot in _WEIGHT_SLOTS.get(node.op_type, ()):
                    if slot < len(node.input) and node.input[slot] in extra:
                        raise ModelError(f"node '{_node_name(node)}' ({node.op_type}): weight '{node.input[slot]}' is a graph input, not an initializer; pcert needs the weights stored in the model")
            raise ModelError(f"model must have exactly one input, found {len(inputs)}: {', '.join(sorted(extra)) or 'none'}")
        if len(g.output) != 1:
            raise ModelError(f"model must have exactly one output, found {len(g.output)}: {', '.join(o.name for o in g.output)}")

    def _input_shape(self, value: onnx.ValueInfoProto) -> tuple[int | None, tuple[int, ...]]:
        ttype = value.type.tensor_type
        if helper.tensor_dtype_to_np_dtype(ttype.elem_type) not in _FLOAT_TYPES:
            raise ModelError(f"model input '{value.name}' must be a float tensor, got {onnx.TensorProto.DataType.Name(ttype.elem_type)}")
        dims = list(ttype.shape.dim) if ttype.HasField("shape") else []
        if len(dims) < 2:
            raise ModelError(f"model input '{value.name}' must have a batch axis and at least one feature axis, got rank {len(dims)}")
        per_sample = []
        for axis, dim in enumerate(dims[1:], start=1):
            if not dim.HasField("dim_value") or dim.dim_value < 1:
                raise ModelError(f"model input '{value.name}' has no fixed size on axis {axis} ('{dim.dim_param or '?'}'); only the batch axis may be dynamic")
            per_sample.append(int(dim.dim_value))
        batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") else None
        return batch, tuple(per_sample)

    # --- helpers ---------------------------------------------------------------------------
    def error(self, node: onnx.NodeProto, message: str) -> ModelError:
        return ModelError(f"node '{_node_name(node)}' ({node.op_type}): {message}")

    def weight(self, node: onnx.NodeProto, name: str) -> np.ndarray:
        """A float constant as float64; rejects non-float and non-finite values."""
        if name not in self.consts:
            raise self.error(node, f"operand '{name}' must be a constant initializer")
        value = self.consts[name]
        if value.dtype.type not in _FLOAT_TYPES:
            raise self.error(node, f"weight '{name}' has dtype {value.dtype}; weights must be floating point")
        bad = int(np.size(value) - np.isfinite(value).sum())
        if bad:
            raise self.error(node, f"weight '{name}' has {bad} NaN/inf values")
        return value.astype(np.float64)

    def ints(self, node: onnx.NodeProto, name: str) -> list[int]:
        value = self.consts.get(name)
        if value is None or value.dtype.kind not in "iu":
            raise self.error(node, f"operand '{name}' must be a constant integer tensor")
        return [int(v) for v in value.reshape(-1)]

    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def append(self, op: str, node: onnx.NodeProto, out_shape: tuple[int, ...], weight=None, bias=None, **attrs) -> None:
        self.layers.append(Layer(op, _node_name(node), self.shape, tuple(out_shape), weight, bias, attrs))  # type: ignore[arg-type]
        self.shape = tuple(out_shape)
        self.fusable = weight is not None

    # --- the walk --------------------------------------------------------------------------
    def run(self, nodes) -> LayerGraph:
        for node in nodes:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = _constant_value(node)
                continue
            dynamic = [name for name in node.input if name and name not in self.consts]
            if not dynamic:
                if node.op_type != "Identity":
                    raise self.error(node, "computes only on constants; fold constants before export (e.g. with onnxsim)")
                self.consts[node.output[0]] = self.consts[node.input[0]]
                continue
            if len(dynamic) > 1 or dynamic[0] != self.current or self.consumers.get(self.current, 0) > 1:
                raise ModelError(f"the model is not a single chain: node '{_node_name(node)}' ({node.op_type}) reads {', '.join(repr(d) for d in dynamic)}; branches and residual connections are not supported")
            if node.op_type != "Add" and node.input[0] != self.current:
                raise self.error(node, "the data must be the first operand and the weights constant initializers")
            for extra in node.output[1:]:
                if extra and self.consumers.get(extra, 0):
                    raise self.error(node, f"its secondary output '{extra}' is used; only the main output may be")
            op = "activation" if node.op_type in _ACTIVATIONS else node.op_type.lower()
            getattr(self, f"_{op}")(node)
            self.current = node.output[0]
        if self.current != self.output_name:
            raise ModelError(f"the model is not a single chain: output '{self.output_name}' is not computed from input '{self.input_name}' by the last node")
        if not self.layers:
            raise ModelError("the model computes no layers (only Identity/Dropout)")
        return LayerGraph(self.input_shape, tuple(self._finalise()))

    def _finalise(self) -> list[Layer]:
        layers, seen = [], set()
        for i, layer in enumerate(self.layers):
            name = layer.name if layer.name not in seen else f"{layer.name}_{i}"
            seen.add(name)
            if layer.weight is None:
                layers.append(dataclasses.replace(layer, name=name))
                continue
            weight, bias = layer.weight.astype(np.float32), layer.bias.astype(np.float32)
            if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
                raise ModelError(f"layer '{layer.name}': weights overflow float32 after folding")
            layers.append(dataclasses.replace(layer, name=name, weight=weight, bias=bias))
        return layers

    # --- operators -------------------------------------------------------------------------
    def _flat_input(self, node: onnx.NodeProto) -> int:
        if len(self.shape) != 1:
            raise self.error(node, f"needs a flat per-sample input, got shape {list(self.shape)}; add a Flatten first")
        return self.shape[0]

    def _linear(self, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> None:
        if weight.shape[1] != self._flat_input(node):
            raise self.error(node, f"weight expects {weight.shape[1]} inputs, got {self.shape[0]}")
        self.append("linear", node, (weight.shape[0],), weight, bias)

    def _gemm(self, node: onnx.NodeProto) -> None:
        a = self.attrs(node)
        if a.get("transA", 0):
            raise self.error(node, "transA=1 transposes the batch axis; not supported")
        w = self.weight(node, node.input[1])
        if w.ndim != 2:
            raise self.error(node, f"weight must be 2-D, got shape {list(w.shape)}")
        w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
        bias = np.zeros(w.shape[0])
        if len(node.input) > 2 and node.input[2]:
            bias = self._channel_constant(node, self.weight(node, node.input[2]) * a.get("beta", 1.0), (w.shape[0],))
        self._linear(node, w, bias)

    def _matmul(self, node: onnx.NodeProto) -> None:
        w = self.weight(node, node.input[1])
        if w.ndim != 2:
            raise self.error(node, f"weight must be 2-D, got shape {list(w.shape)}")
        self._linear(node, w.T, np.zeros(w.shape[1]))

    def _channel_constant(self, node: onnx.NodeProto, value: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
        """A constant added to a [B, *out_shape] tensor, as one value per output channel."""
        full = (1, *out_shape)
        try:
            ok = np.broadcast_shapes(full, value.shape) == full
        except ValueError:
            ok = False
        if not ok:
            raise self.error(node, f"constant of shape {list(value.shape)} does not broadcast to the per-sample shape {list(out_shape)}")
        per_sample = np.broadcast_to(value, full)[0]
        per_channel = per_sample.reshape(out_shape[0], -1)
        if not (per_channel == per_channel[:, :1]).all():
            raise self.error(node, "constant varies over spatial positions; only per-channel biases can be folded")
        return per_channel[:, 0].copy()

    def _add(self, node: onnx.NodeProto) -> None:
        if not self.fusable:
            raise self.error(node, "adding a constant is supported only right after Gemm/MatMul/Conv (it is folded into the bias)")
        const = next(name for name in node.input if name != self.current)
        last = self.layers[-1]
        add = self._channel_constant(node, self.weight(node, const), last.out_shape)
        self.layers[-1] = dataclasses.replace(last, bias=last.bias + add)

    def _batchnormalization(self, node: onnx.NodeProto) -> None:
        a = self.attrs(node)
        if a.get("training_mode", 0):
            raise self.error(node, "training_mode=1; export the model in inference mode")
        if not self.fusable:
            raise self.error(node, "must directly follow a Gemm/MatMul/Conv (it is folded into that layer)")
        scale, beta, mean, var = (self.weight(node, name) for name in node.input[1:5])
        last = self.layers[-1]
        channels = last.out_shape[0]
        if any(p.shape != (channels,) for p in (scale, beta, mean, var)):
            raise self.error(node, f"parameters must have shape [{channels}] (the channels of '{last.name}')")
        denom = var + a.get("epsilon", 1e-5)
        if (denom <= 0).any():
            raise self.error(node, "variance + epsilon must be positive")
        s = scale / np.sqrt(denom)
        weight = last.weight * s.reshape(-1, *([1] * (last.weight.ndim - 1)))
        self.layers[-1] = dataclasses.replace(last, weight=weight, bias=(last.bias - mean) * s + beta)

    def _conv(self, node: onnx.NodeProto) -> None:
        w = self.weight(node, node.input[1])
        if w.ndim != 4:
            raise self.error(node, f"only 2-D convolutions are supported (weight rank {w.ndim})")
        if len(self.shape) != 3:
            raise self.error(node, f"needs a [C,H,W] per-sample input, got {list(self.shape)}")
        a = self.attrs(node)
        groups = int(a.get("group", 1))
        out_c, in_per_group, kh, kw = w.shape
        if self.shape[0] != in_per_group * groups or out_c % groups:
            raise self.error(node, f"weight {list(w.shape)} with group={groups} does not fit {self.shape[0]} input channels")
        if list(a.get("kernel_shape", [kh, kw])) != [kh, kw]:
            raise self.error(node, f"kernel_shape {a['kernel_shape']} disagrees with the weight {list(w.shape)}")
        stride = tuple(a.get("strides", [1, 1]))
        dilation = tuple(a.get("dilations", [1, 1]))
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s, d in zip(self.shape[1:], (kh, kw), stride, dilation):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads.append(total)
            if any(p % 2 for p in pads):
                raise self.error(node, f"auto_pad={auto_pad} needs asymmetric padding here (total {pads}); not supported")
            padding = (pads[0] // 2, pads[1] // 2)
        else:
            pads = [0, 0, 0, 0] if auto_pad == "VALID" else list(a.get("pads", [0, 0, 0, 0]))
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise self.error(node, f"asymmetric padding {pads} (begin != end) is not supported")
            padding = (pads[0], pads[1])
        out_hw = tuple(
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(self.shape[1:], padding, dilation, (kh, kw), stride)
        )
        if min(out_hw) < 1:
            raise self.error(node, f"output would be empty for input {list(self.shape)}")
        bias = self.weight(node, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(out_c)
        if bias.shape != (out_c,):
            raise self.error(node, f"bias must have shape [{out_c}], got {list(bias.shape)}")
        self.append("conv2d", node, (out_c, *out_hw), w, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)

    def _activation(self, node: onnx.NodeProto) -> None:
        self.append(_ACTIVATIONS[node.op_type], node, self.shape)

    def _flatten(self, node: onnx.NodeProto) -> None:
        axis = int(self.attrs(node).get("axis", 1))
        if axis < 0:
            axis += len(self.shape) + 1
        if axis != 1:
            raise self.error(node, f"axis={axis} would mix the batch axis; only axis=1 is supported")
        self.append("flatten", node, (math.prod(self.shape),))

    def _reshape(self, node: onnx.NodeProto) -> None:
        target = self.ints(node, node.input[1])
        if self.attrs(node).get("allowzero", 0) and 0 in target:
            raise self.error(node, "allowzero=1 with a zero in the shape is not supported")
        if not target or any(v < -1 for v in target):
            raise self.error(node, f"invalid target shape {target}")
        rest = []
        for i, v in enumerate(target[1:]):
            if v == 0 and i >= len(self.shape):
                raise self.error(node, f"target shape {target} copies axis {i + 1}, which the input does not have")
            rest.append(self.shape[i] if v == 0 else v)
        n = math.prod(self.shape)
        keeps_batch = target[0] == 0 or (self.batch is not None and target[0] == self.batch)
        if target[0] == -1:  # batch inferred: kept only if the rest holds exactly one sample
            keeps_batch = -1 not in rest and math.prod(rest) == n
        elif keeps_batch and rest.count(-1) == 1:
            known = math.prod(v for v in rest if v != -1)
            rest = [n // known if v == -1 and known and n % known == 0 else v for v in rest]
        if not keeps_batch:
            raise self.error(node, f"target shape {target} does not keep the batch axis (a sample has shape {list(self.shape)}); use [0 or -1, *per_sample_shape]")
        if -1 in rest or math.prod(rest) != n:
            raise self.error(node, f"cannot reshape per-sample shape {list(self.shape)} to {target[1:]}")
        self.append("reshape", node, tuple(rest), shape=tuple(rest))

    def _identity(self, node: onnx.NodeProto) -> None:
        pass

    def _dropout(self, node: onnx.NodeProto) -> None:
        if len(node.input) > 2 and node.input[2]:
            mode = self.consts.get(node.input[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise self.error(node, "training_mode must be a constant false; export the model in inference mode")


def import_onnx(path: str | Path) -> ImportedModel:
    """Load, check and lower an ONNX model to a LayerGraph (shapes per sample, float32 weights)."""
    path = Path(path)
    model, sha = _load(path)
    opsets = _opsets(model)
    _check_supported(model, opsets)
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ModelError(f"model file {path}: ONNX shape inference failed: {str(exc).strip().splitlines()[-1]}") from None
    graph = _Lowering(model).run(model.graph.node)
    declared = model.graph.output[0].type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") else None for d in declared][1:]
    if len(dims) == len(graph.output_shape) and any(d is not None and d != s for d, s in zip(dims, graph.output_shape)):
        raise ModelError(f"model file {path}: declared output shape {dims} differs from the computed {list(graph.output_shape)}")
    return ImportedModel(graph=graph, sha256=sha, opset=opsets.get("", 0))


def check_parity(model: ImportedModel, path: str | Path, *, seed: int = 0, samples: int = 16,
                 rtol: float = 1e-4, atol: float = 1e-5) -> dict[str, float]:
    """Compare the imported graph (torch, float32) with onnxruntime on seeded random inputs.

    Returns ``{"max_abs": ..., "max_rel": ...}``; raises ModelError if any output differs by
    more than ``atol + rtol * |reference|`` or if the file changed since import.
    """
    import onnxruntime as ort
    import torch

    from .torch_model import to_torch

    path = Path(path)
    try:
        raw = path.read_bytes()
        same = _digest(path, raw, _external_files(onnx.load_model_from_string(raw))) == model.sha256
    except Exception:
        same = False
    if not same:
        raise ModelError(f"model file {path} is missing or changed since it was imported")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
    inp = session.get_inputs()[0]
    dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(inp.type, np.float32)
    x = np.random.default_rng(seed).standard_normal((samples, *model.graph.input_shape)).astype(np.float32)
    chunk = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else samples
    ref = np.concatenate([session.run(None, {inp.name: x[i:i + chunk].astype(dtype)})[0]
                          for i in range(0, samples, chunk)]).astype(np.float64)
    with torch.no_grad():
        got = to_torch(model.graph)(torch.from_numpy(x)).numpy().astype(np.float64)
    if got.shape != ref.shape:
        raise ModelError(f"model {path}: imported graph gives shape {list(got.shape)}, onnxruntime {list(ref.shape)}")
    diff = np.abs(got - ref)
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    max_rel = float(np.nanmax(diff / np.maximum(np.abs(ref), np.finfo(np.float32).tiny))) if diff.size else 0.0
    if not (np.isfinite(got).all() and np.isfinite(ref).all() and (diff <= atol + rtol * np.abs(ref)).all()):
        raise ModelError(
            f"model {path}: imported graph disagrees with onnxruntime on {samples} seeded inputs: "
            f"max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} (rtol {rtol:g}, atol {atol:g})"
        )
    return {"max_abs": max_abs, "max_rel": max_rel}


def check_input_compatible(graph: LayerGraph, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample shape the data features must be reshaped to for ``graph`` (e.g. 64 -> [1,8,8])."""
    n_data, n_model = math.prod(feature_shape), math.prod(graph.input_shape)
    if n_data != n_model:
        raise ModelError(
            f"data features have shape {list(feature_shape)} ({n_data} values per sample) but the model "
            f"input has shape {list(graph.input_shape)} ({n_model} values)"
        )
    return tuple(graph.input_shape)
