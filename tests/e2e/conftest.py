"""Small, fast end-to-end fixtures: a tiny halfmoons spec with its own generated model."""
from __future__ import annotations

from pathlib import Path

import pytest

from pcert.cli import main

SPEC = """\
pcert 1
model "tiny.onnx"
data halfmoons {{ train: 200, test: 80, noise: {noise}, seed: 1 }}
train sgd {{ epochs: 2, batch: 200, lr: 0.5, loss: cross_entropy }}
threat bounded {{
  features {{ n: [0, 5], eps: 0.01, norm: inf }}
}}
objective targeted {{ on: test }}
bounds ibp
{gates}
output "runs"
"""


def write_spec(folder: Path, gates: str, noise: float = 0.3, name: str = "tiny.pcert") -> Path:
    if not (folder / "tiny.onnx").exists():
        assert main(["model", "mlp", "2,16,2", "-o", str(folder / "tiny.onnx"), "--seed", "0"]) == 0
    path = folder / name
    path.write_text(SPEC.format(noise=noise, gates=gates), encoding="utf-8")
    return path


@pytest.fixture
def passing_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path, "gate nominal_accuracy >= 0.5")


@pytest.fixture
def failing_spec(tmp_path: Path) -> Path:
    # noise 0.3 makes some test points wrong, and a wrong point is never certified
    return write_spec(tmp_path, "gate nominal_accuracy >= 0.5\ngate certified_accuracy >= 0.99 at n = 5")


def run_dirs(spec: Path) -> list[Path]:
    root = spec.parent / "runs"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
