"""ONNX import: parity with onnxruntime per operator, BatchNorm folding, and every error path."""
from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pcert.compiler.model_builder import build_conv, build_mlp
from pcert.compiler.onnx_export import graph_to_onnx, save_onnx
from pcert.compiler.onnx_import import ImportedModel, check_input_compatible, check_parity, import_onnx
from pcert.compiler.torch_model import to_torch
from pcert.errors import ModelError

RNG = np.random.default_rng(0)


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def write(tmp_path, nodes, inits: dict, in_shape, *, inputs=None, outputs=("y",), out_shape=None, opset=17, name="m.onnx"):
    """Save a model with input 'x' [N, *in_shape] (plus extra ``inputs``); output shapes inferred unless given."""
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape]), *(inputs or [])]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape) for o in outputs]
    graph = helper.make_graph(nodes, "g", ins, outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def node(op, ins, outs, name=None, **attrs):
    return helper.make_node(op, ins, outs, name=name or outs[0], **attrs)


def imported_ok(path, **tol) -> ImportedModel:
    model = import_onnx(path)
    stats = check_parity(model, path, **tol)
    assert stats["max_abs"] <= 1e-4
    return model


# --- parity per supported operator -----------------------------------------------------------

@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(1, 1.0, 1.0, (3,)), (0, 0.5, 2.0, (1, 3)), (1, 1.0, 0.3, ()), (0, 1.0, 1.0, None)])
def test_gemm(tmp_path, trans_b, alpha, beta, c_shape):
    inits = {"W": w(3, 4) if trans_b else w(4, 3)}
    ins = ["x", "W"]
    if c_shape is not None:
        inits["C"] = w(*c_shape)
        ins.append("C")
    path = write(tmp_path, [node("Gemm", ins, ["y"], transB=trans_b, alpha=alpha, beta=beta)], inits, (4,))
    layer, = imported_ok(path).graph.layers
    assert layer.op == "linear" and layer.weight.shape == (3, 4) and layer.bias.shape == (3,)


@pytest.mark.parametrize("add_inputs", [None, ["h", "b"], ["b", "h"]])
def test_matmul_with_and_without_bias_add(tmp_path, add_inputs):
    nodes = [node("MatMul", ["x", "W"], ["h" if add_inputs else "y"])]
    if add_inputs:
        nodes.append(node("Add", add_inputs, ["y"]))
    path = write(tmp_path, nodes, {"W": w(5, 2), "b": w(2)}, (5,))
    layer, = imported_ok(path).graph.layers
    assert layer.op == "linear"
    if not add_inputs:
        np.testing.assert_array_equal(layer.bias, np.zeros(2))


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Tanh"])
def test_activations(tmp_path, act):
    path = write(tmp_path, [node("Gemm", ["x", "W", "b"], ["h"], transB=1), node(act, ["h"], ["y"])], {"W": w(6, 3), "b": w(6)}, (3,))
    assert [l.op for l in imported_ok(path).graph.layers] == ["linear", act.lower()]


@pytest.mark.parametrize("attrs,bias,out_shape", [
    ({}, True, (4, 5, 5)),
    ({"pads": [1, 1, 1, 1], "strides": [2, 2]}, True, (4, 4, 4)),
    ({"dilations": [2, 1], "pads": [2, 0, 2, 0]}, False, (4, 7, 5)),
    ({"auto_pad": "SAME_UPPER"}, True, (4, 7, 7)),
    ({"auto_pad": "VALID", "strides": [1, 2]}, True, (4, 5, 3)),
])
def test_conv(tmp_path, attrs, bias, out_shape):
    inits = {"W": w(4, 2, 3, 3), "B": w(4)}
    ins = ["x", "W", "B"] if bias else ["x", "W"]
    path = write(tmp_path, [node("Conv", ins, ["y"], kernel_shape=[3, 3], **attrs)], inits, (2, 7, 7))
    layer, = imported_ok(path).graph.layers
    assert layer.op == "conv2d" and layer.out_shape == out_shape


def test_grouped_conv_with_channel_add_and_flatten(tmp_path):
    nodes = [node("Conv", ["x", "W"], ["c"], group=2), node("Add", ["c", "b"], ["a"]),
             node("Flatten", ["a"], ["f"], axis=-3), node("Gemm", ["f", "V", "d"], ["y"], transB=1)]
    inits = {"W": w(4, 2, 2, 2), "b": w(1, 4, 1, 1), "V": w(3, 36), "d": w(3)}
    graph = imported_ok(write(tmp_path, nodes, inits, (4, 4, 4))).graph
    assert [l.op for l in graph.layers] == ["conv2d", "flatten", "linear"]
    assert graph.layers[0].attrs["groups"] == 2
    np.testing.assert_array_equal(graph.layers[0].bias, inits["b"].reshape(4))


@pytest.mark.parametrize("shape,per_sample", [([0, -1], (64,)), ([-1, 4, 16], (4, 16)), ([0, 1, 8, 8], (1, 8, 8)), ([0, 0, -1], (4, 16))])
def test_reshape(tmp_path, shape, per_sample):
    nodes = [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(shape, np.int64))),
             node("Reshape", ["x", "s"], ["y"])]
    graph = imported_ok(write(tmp_path, nodes, {}, (4, 4, 4))).graph
    assert graph.layers[0].op == "reshape" and graph.output_shape == per_sample
    assert graph.layers[0].attrs["shape"] == per_sample


@pytest.mark.parametrize("opset", [11, 17])
def test_identity_and_dropout_dropped(tmp_path, opset):
    nodes = [node("Identity", ["x"], ["i"]), node("Gemm", ["i", "W", "b"], ["h"], transB=1)]
    inits = {"W": w(3, 4), "b": w(3)}
    if opset >= 12:
        inits.update(r=np.array(0.5, np.float32), t=np.array(False))
        nodes.append(node("Dropout", ["h", "r", "t"], ["y", "mask"]))
    else:
        nodes.append(node("Dropout", ["h"], ["y"], ratio=0.5))
    graph = imported_ok(write(tmp_path, nodes, inits, (4,), opset=opset)).graph
    assert [l.op for l in graph.layers] == ["linear"]


def test_constant_node_weights(tmp_path):
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w(4, 3))),
             helper.make_node("Constant", [], ["b"], value_floats=[1.0, 2.0, 3.0]),
             node("Gemm", ["x", "W", "b"], ["y"])]
    layer, = imported_ok(write(tmp_path, nodes, {}, (4,))).graph.layers
    np.testing.assert_array_equal(layer.bias, [1.0, 2.0, 3.0])


# --- BatchNorm folding ------------------------------------------------------------------------

def _bn_inits(c: int) -> dict:
    return {"s": w(c), "be": w(c), "mu": w(c), "var": RNG.uniform(0.2, 2.0, c).astype(np.float32)}


@pytest.mark.parametrize("conv", [False, True])
def test_batchnorm_folding_is_exact(tmp_path, conv):
    c = 5
    inits = {"W": w(c, 2, 3, 3) if conv else w(c, 6), "B": w(c), **_bn_inits(c)}
    first = node("Conv", ["x", "W", "B"], ["h"], pads=[1, 1, 1, 1]) if conv else node("Gemm", ["x", "W", "B"], ["h"], transB=1)
    nodes = [first, node("BatchNormalization", ["h", "s", "be", "mu", "var"], ["y"], epsilon=1e-3)]
    graph = imported_ok(write(tmp_path, nodes, inits, (2, 4, 4) if conv else (6,)), rtol=1e-5, atol=1e-6).graph
    layer, = graph.layers
    # float64 reference fold, rounded once to float32: the importer must match it bit for bit
    f = {k: v.astype(np.float64) for k, v in inits.items()}
    scale = f["s"] / np.sqrt(f["var"] + 1e-3)
    np.testing.assert_array_equal(layer.weight, (f["W"] * scale.reshape(-1, *[1] * (f["W"].ndim - 1))).astype(np.float32))
    np.testing.assert_array_equal(layer.bias, ((f["B"] - f["mu"]) * scale + f["be"]).astype(np.float32))


def test_torch_exported_model_with_batchnorm_and_dropout(tmp_path):
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
                           nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(2, 1, 4, 4), path, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    graph = imported_ok(path).graph
    assert [l.op for l in graph.layers] == ["conv2d", "relu", "flatten", "linear", "tanh", "linear"]
    x = torch.randn(9, 1, 4, 4)
    with torch.no_grad():
        np.testing.assert_allclose(to_torch(graph)(x).numpy(), module(x).numpy(), rtol=1e-4, atol=1e-5)


# --- round trip -------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), act=st.sampled_from(["relu", "sigmoid", "tanh"]), seed=st.integers(0, 99))
def test_round_trip_mlp_identical_weights(tmp_path_factory, sizes, act, seed):
    graph = build_mlp(sizes, act, seed=seed)
    path = save_onnx(graph, tmp_path_factory.mktemp("rt") / "mlp.onnx")
    model = import_onnx(path)
    assert model.opset == 17 and model.graph.input_shape == graph.input_shape
    assert len(model.graph.layers) == len(graph.layers)
    for a, b in zip(graph.layers, model.graph.layers):
        assert (a.op, a.in_shape, a.out_shape, a.attrs) == (b.op, b.in_shape, b.out_shape, b.attrs)
        if a.is_parametric:
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)


def test_round_trip_conv_and_sha(tmp_path):
    graph = build_conv("1x8x8 -> 8c3p1 -> relu -> 4c3s2 -> sigmoid -> flatten -> r4x3x3 -> flatten -> 10", seed=2)
    path = save_onnx(graph, tmp_path / "conv.onnx")
    model = imported_ok(path)
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for a, b in zip(graph.layers, model.graph.layers):
        assert (a.op, a.out_shape, a.attrs) == (b.op, b.out_shape, b.attrs)
        if a.is_parametric:
            np.testing.assert_array_equal(a.weight, b.weight)


# --- errors -----------------------------------------------------------------------------------

def _error(path) -> str:
    with pytest.raises(ModelError) as info:
        import_onnx(path)
    return str(info.value)


def test_missing_and_corrupt_files(tmp_path):
    assert "not found" in _error(tmp_path / "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage\xff\xff\xff")
    assert "not a valid ONNX model" in _error(tmp_path / "bad.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "not a valid ONNX model" in _error(tmp_path / "empty.onnx")


def test_unsupported_operators_all_named_in_one_error(tmp_path):
    path = write(tmp_path, [node("Gemm", ["x", "W"], ["h"], transB=1), helper.make_node("Unsqueeze", ["h", "ax"], ["u"], name="u"),
                            node("MaxPool", ["u"], ["p"], name="p", kernel_shape=[1]),
                            helper.make_node("Squeeze", ["p", "ax"], ["q"], name="q"), node("Softmax", ["q"], ["y"], name="sm")],
                 {"W": w(3, 4), "ax": np.array([2], np.int64)}, (4,))
    msg = _error(path)
    assert msg.startswith("unsupported operators: node 'u' (Unsqueeze, opset 17), node 'p' (MaxPool, opset 17), node 'q' (Squeeze, opset 17), node 'sm' (Softmax, opset 17); supported: ")
    assert "Gemm" in msg.split("supported:")[-1] and "'h'" not in msg


def test_branchy_graphs_are_rejected(tmp_path):
    residual = [node("Gemm", ["x", "W"], ["h"], transB=1), node("Relu", ["h"], ["r"]), node("Add", ["r", "x"], ["y"])]
    assert "not a single chain" in _error(write(tmp_path, residual, {"W": w(4, 4)}, (4,), name="res.onnx"))
    fan_out = [node("Relu", ["x"], ["a"]), node("Sigmoid", ["x"], ["b"]), node("Add", ["a", "b"], ["y"])]
    assert "not a single chain" in _error(write(tmp_path, fan_out, {}, (4,), name="fan.onnx"))


def test_shape_mismatch(tmp_path):
    path = write(tmp_path, [node("Gemm", ["x", "W"], ["y"], transB=1)], {"W": w(3, 5)}, (4,), out_shape=["N", 3])
    assert "shape inference failed" in _error(path)
    with pytest.raises(ModelError, match=r"data features have shape \[63\]"):
        check_input_compatible(build_conv("1x8x8 -> 2c3 -> flatten -> 2"), (63,))
    assert check_input_compatible(build_conv("1x8x8 -> 2c3 -> flatten -> 2"), (64,)) == (1, 8, 8)


def test_io_count_and_weight_inputs(tmp_path):
    extra = helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 4])
    msg = _error(write(tmp_path, [node("Gemm", ["x", "W"], ["y"], transB=1)], {}, (4,), inputs=[extra], name="a.onnx"))
    assert "weight 'W' is a graph input, not an initializer" in msg
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])
    assert "exactly one input, found 2" in _error(write(tmp_path, [node("Relu", ["x"], ["y"])], {}, (4,), inputs=[z], name="b.onnx"))
    two_out = [node("Relu", ["x"], ["y"]), node("Sigmoid", ["y"], ["y2"])]
    assert "exactly one output, found 2" in _error(write(tmp_path, two_out, {}, (4,), outputs=("y", "y2"), name="c.onnx"))


def test_bad_weights(tmp_path):
    bad = w(3, 4)
    bad[0, 1], bad[2, 2] = np.nan, np.inf
    assert "2 NaN/inf values" in _error(write(tmp_path, [node("Gemm", ["x", "W"], ["y"], transB=1)], {"W": bad}, (4,), name="nan.onnx"))
    ints = {"W": np.ones((3, 4), np.int64)}
    _error(write(tmp_path, [node("Gemm", ["x", "W"], ["y"], transB=1)], ints, (4,), name="int.onnx"))


@pytest.mark.parametrize("nodes,inits,in_shape,expected", [
    ([node("Conv", ["x", "W"], ["y"], pads=[1, 0, 0, 0])], {"W": w(2, 1, 3, 3)}, (1, 5, 5), "asymmetric padding"),
    ([node("Relu", ["x"], ["r"]), node("BatchNormalization", ["r", "s", "be", "mu", "var"], ["y"])], _bn_inits(4), (4,), "must directly follow"),
    ([node("Gemm", ["x", "W"], ["h"], transB=1), node("BatchNormalization", ["h", "s", "be", "mu", "var"], ["y", "rm", "rv"], training_mode=1)],
     {"W": w(4, 4), **_bn_inits(4)}, (4,), "training_mode|N,4"),
    ([node("Relu", ["x"], ["r"]), node("Add", ["r", "b"], ["y"])], {"b": w(4)}, (4,), "only right after"),
    ([node("Reshape", ["x", "s"], ["y"])], {"s": np.array([-1, 8], np.int64)}, (4, 4), "does not keep the batch axis|N,8"),
    ([node("Flatten", ["x"], ["y"], axis=2)], {}, (2, 3), "axis=2"),
    ([node("MatMul", ["x", "W"], ["y"])], {"W": w(4, 3)}, (4, 4), "flat per-sample input"),
    ([node("Dropout", ["x", "r", "t"], ["y"])], {"r": np.array(0.5, np.float32), "t": np.array(True)}, (4,), "training_mode"),
    ([node("MatMul", ["W", "x"], ["y"])], {"W": w(4, 4)}, (4,), "first operand"),
    ([node("Conv", ["x", "W"], ["h"]), node("Add", ["h", "b"], ["y"])], {"W": w(2, 1, 1, 1), "b": w(1, 3, 3)}, (1, 3, 3), "spatial"),
])
def test_unsupported_patterns(tmp_path, nodes, inits, in_shape, expected):
    expected, _, out_shape = expected.partition("|")  # declared output shape where ONNX cannot infer it
    msg = _error(write(tmp_path, nodes, inits, in_shape, out_shape=out_shape.split(",") if out_shape else None))
    assert expected in msg and "\n" not in msg


def test_dynamic_feature_axis_rejected(tmp_path):
    graph = helper.make_graph([node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "F"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "d.onnx")
    assert "no fixed size on axis 1" in _error(tmp_path / "d.onnx")


def test_parity_failure_and_changed_file(tmp_path):
    path = save_onnx(build_mlp([3, 5, 2]), tmp_path / "m.onnx")
    model = import_onnx(path)
    layer = model.graph.layers[0]
    broken = dataclasses.replace(layer, bias=layer.bias + np.float32(1e-2))
    tampered = dataclasses.replace(model, graph=dataclasses.replace(model.graph, layers=(broken, *model.graph.layers[1:])))
    with pytest.raises(ModelError, match=r"disagrees with onnxruntime .* max abs diff [0-9.e-]+, max rel diff"):
        check_parity(tampered, path)
    save_onnx(build_mlp([3, 5, 2], seed=1), path)
    with pytest.raises(ModelError, match="changed since"):
        check_parity(model, path)


def test_external_data_is_loaded_and_hashed(tmp_path):
    model = onnx.load_model_from_string(graph_to_onnx(build_mlp([4, 8, 2])))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    imported = imported_ok(path)
    assert imported.graph.layers[0].weight.shape == (8, 4)
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[0] ^= 1
    (tmp_path / "ext.data").write_bytes(bytes(data))
    assert import_onnx(path).sha256 != imported.sha256
    with pytest.raises(ModelError, match="changed since"):
        check_parity(imported, path)
    (tmp_path / "ext.data").unlink()
    assert "not a valid ONNX model" in _error(path)
