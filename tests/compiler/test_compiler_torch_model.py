"""to_torch / from_torch, the seeded model builders and the ONNX exporter."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pcert.compiler.model_builder import build_conv, build_from_layout, build_mlp
from pcert.compiler.onnx_export import graph_to_onnx, save_onnx
from pcert.compiler.torch_model import from_torch, graph_from_sequential, to_torch
from pcert.errors import ModelError

ARCHS = [
    "2 -> 16 -> relu -> 16 -> tanh -> 3",
    "1x8x8 -> 8c3 -> relu -> flatten -> 10",
    "2x9x9 -> 6c3s2p1 -> sigmoid -> 4c3d2g2 -> relu -> flatten -> r4x1x1 -> flatten -> 5",
]


def _ort(graph, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(graph_to_onnx(graph), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_to_torch_matches_onnxruntime(arch):
    graph = build_conv(arch, seed=3)
    x = np.random.default_rng(0).standard_normal((7, *graph.input_shape)).astype(np.float32)
    with torch.no_grad():
        got = to_torch(graph)(torch.from_numpy(x)).numpy()
    assert got.shape == (7, *graph.output_shape)
    np.testing.assert_allclose(got, _ort(graph, x), rtol=1e-5, atol=1e-6)


def test_to_torch_float64_and_copies_weights():
    graph = build_mlp([3, 4, 2])
    module = to_torch(graph, dtype=torch.float64)
    assert module[0].weight.dtype == torch.float64
    with torch.no_grad():
        module[0].weight.add_(1.0)
    assert not np.allclose(graph.layers[0].weight, module[0].weight.detach().numpy())  # graph untouched


def test_from_torch_round_trip_after_training():
    graph = build_mlp([4, 8, 3], seed=1)
    module = to_torch(graph)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    nn.functional.cross_entropy(module(x), y).backward()
    opt.step()
    trained = from_torch(graph, module)
    assert [l.op for l in trained.layers] == [l.op for l in graph.layers]
    assert not np.array_equal(trained.layers[0].weight, graph.layers[0].weight)
    np.testing.assert_array_equal(trained.layers[2].bias, module[2].bias.detach().numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(to_torch(trained)(x).numpy(), module(x).numpy())


def test_from_torch_rejects_mismatched_module():
    graph = build_mlp([4, 8, 3])
    with pytest.raises(ValueError):
        from_torch(graph, nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    with pytest.raises(ValueError):
        from_torch(graph, nn.Sequential(nn.Linear(4, 8)))


def test_build_mlp_is_torch_default_init_under_seed():
    torch.manual_seed(5)
    reference = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    state = torch.get_rng_state()
    graph = build_mlp([2, 16, 2], activation="tanh", seed=5)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert [l.op for l in graph.layers] == ["linear", "tanh", "linear"]
    np.testing.assert_array_equal(graph.layers[0].weight, reference[0].weight.detach().numpy())
    np.testing.assert_array_equal(graph.layers[2].bias, reference[2].bias.detach().numpy())
    assert build_mlp([2, 16, 2], "tanh", seed=6).layers[0].weight.tolist() != graph.layers[0].weight.tolist()


def test_build_conv_shapes_and_attrs():
    graph = build_conv("1x8x8 -> 8c3s2p1 -> relu -> flatten -> 10")
    conv = graph.layers[0]
    assert conv.op == "conv2d" and conv.out_shape == (8, 4, 4) and conv.weight.shape == (8, 1, 3, 3)
    assert conv.attrs == {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    assert graph.output_shape == (10,) and graph.num_params() == 8 * 9 + 8 + 128 * 10 + 10


@pytest.mark.parametrize("arch", ["", "8x8", "1x8x8 -> 10", "4 -> 8c3", "4 -> softmax", "1x4x4 -> 8c5", "4 -> r3", "3x4x4 -> 4c3g2"])
def test_build_conv_bad_shorthand(arch):
    with pytest.raises(ModelError):
        build_conv(arch)


def test_build_from_layout():
    mlp = build_from_layout("mlp", "2,16,3", seed=4, activation="tanh")
    assert [l.op for l in mlp.layers] == ["linear", "tanh", "linear"]
    np.testing.assert_array_equal(mlp.layers[0].weight, build_mlp([2, 16, 3], "tanh", seed=4).layers[0].weight)
    conv = build_from_layout("conv", "1x8x8,8c3,relu,flatten,10", seed=1)
    same = build_conv("1x8x8 -> 8c3 -> relu -> flatten -> 10", seed=1)
    assert [l.op for l in conv.layers] == [l.op for l in same.layers]
    np.testing.assert_array_equal(conv.layers[0].weight, same.layers[0].weight)
    for kind, layout in [("mlp", "2,x,3"), ("mlp", "2"), ("conv", "1x8x8,c8k3,f10"), ("resnet", "1")]:
        with pytest.raises(ModelError):
            build_from_layout(kind, layout)


def test_build_mlp_bad_args():
    with pytest.raises(ModelError):
        build_mlp([4])
    with pytest.raises(ModelError):
        build_mlp([4, 2], activation="gelu")


def test_export_is_clean_opset17_with_dynamic_batch(tmp_path):
    graph = build_conv(ARCHS[2])
    path = save_onnx(graph, tmp_path / "m.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [n.op_type for n in model.graph.node] == ["Conv", "Sigmoid", "Conv", "Relu", "Flatten", "Reshape", "Flatten", "Gemm"]
    for batch in (1, 5):
        x = np.ones((batch, *graph.input_shape), np.float32)
        assert _ort(graph, x).shape == (batch, 5)


def test_export_writes_zero_bias_when_missing():
    graph = graph_from_sequential(nn.Sequential(nn.Linear(3, 2, bias=False)), (3,))
    np.testing.assert_array_equal(graph.layers[0].bias, np.zeros(2, np.float32))
    model = onnx.load_model_from_string(graph_to_onnx(graph))
    assert len(model.graph.node[0].input) == 3
