"""Regenerate the example models and the example scores file (deterministic; already committed).

    python examples/make_models.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pcert.compiler.data import load_data
from pcert.compiler.model_builder import build_mlp
from pcert.compiler.onnx_export import save_onnx
from pcert.compiler.torch_model import from_torch, to_torch
from pcert.spec.model import DataSpec

HERE = Path(__file__).resolve().parent
MLPS = {
    "moons_mlp": [2, 128, 2],
    "regression_mlp": [10, 16, 1],
    "digits_linear": [64, 10],
    "digits_small": [64, 16, 10],
}


def pretrained_cancer_model() -> None:
    """A 30-32-2 network pretrained on breast-cancer data, whose first layer the fine-tune example freezes."""
    data = load_data(DataSpec(source="breast_cancer", train=450, test=119, seed=1), HERE, "classification")
    graph = build_mlp([30, 32, 2], seed=0)
    net = to_torch(graph)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    save_onnx(from_torch(graph, net), HERE / "models" / "cancer_pretrained.onnx")


def cifar_like_scores(n: int = 400, members: int = 20, classes: int = 10, seed: int = 0) -> None:
    """Softmax scores of an ensemble trained elsewhere: member accuracy ~0.65, errors correlated per point."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    confuser = (labels + rng.integers(1, classes, n)) % classes          # the class a point is mistaken for
    p_correct = rng.beta(2.6, 1.4, n)                                     # per-point difficulty, mean ~0.65
    correct = rng.random((n, members)) < p_correct[:, None]
    to_confuser = rng.random((n, members)) < 0.6
    random_wrong = (labels[:, None] + rng.integers(1, classes, (n, members))) % classes
    votes = np.where(correct, labels[:, None], np.where(to_confuser, confuser[:, None], random_wrong))
    logits = rng.normal(0.0, 1.0, (n, members, classes))
    logits[np.arange(n)[:, None], np.arange(members)[None, :], votes] += 4.0
    scores = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    (HERE / "data").mkdir(exist_ok=True)
    np.savez(HERE / "data" / "cifar_like_scores.npz", scores=scores.astype(np.float32), labels=labels.astype(np.int64))


def main() -> None:
    for name, sizes in MLPS.items():
        save_onnx(build_mlp(sizes, seed=0), HERE / "models" / f"{name}.onnx")
    pretrained_cancer_model()
    cifar_like_scores()


if __name__ == "__main__":
    main()
