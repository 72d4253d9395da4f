"""The CUDA paths, on a device (skipped elsewhere): the compiled Triton top-k kernel against exact
top-k sums, and a training run replayed as CUDA graphs against the same run executed eagerly."""
import numpy as np
import pytest
import torch

from pcert.compiler.model_builder import build_mlp
from pcert.runtime.agt import BudgetPoint, TrainConfig, graphed, train_with_bounds

from test_topk_kernel import _assert_matches_exact, _random_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("seed", range(6))
def test_compiled_triton_kernel_matches_exact(seed):
    from pcert.runtime.agt.topk_triton import outer_topk_triton
    coefs, rows, keep, kk = _random_case(seed, p=1 + seed % 3, shared=seed % 2 == 0, k=1 + 2 * seed, m=1 + seed % 4,
                                         masked=seed % 3 == 0, heavy=seed == 4, shape=[(11, 9), (13, 2)][seed % 2])

    def on_device(hi, lo, rs, keep_, k):
        dev = lambda pairs: [(a.cuda(), b.cuda()) for a, b in pairs]  # noqa: E731
        out = outer_topk_triton(dev(hi), dev(lo), [r.cuda() for r in rs], None if keep_ is None else keep_.cuda(), k)
        return tuple(t.cpu() for t in out)

    _assert_matches_exact(on_device, [c.float() for c in coefs], rows.float(), keep, kk)


def test_graph_replay_equals_eager_steps(monkeypatch):
    graph = build_mlp([20, 32, 4], seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 20)).astype(np.float32), rng.integers(0, 4, 300)
    cfg = TrainConfig(epochs=3, batch=64, lr=0.2, momentum=0.5)  # full batches and a shorter last one
    points = [BudgetPoint(n=3, eps=0.02), BudgetPoint(m=2), BudgetPoint(n=2)]
    replays = []
    call = graphed.GraphedSteps.__call__
    monkeypatch.setattr(graphed.GraphedSteps, "__call__",
                        lambda self, *a: (call(self, *a), replays.append(len(self.graphs)))[0])
    replayed = train_with_bounds(graph, x, y, cfg, points, device="cuda")
    assert replays[-1] == 2  # both batch sizes were captured
    monkeypatch.setattr(graphed.GraphedSteps, "__call__", call)
    init = graphed.GraphedSteps.__init__
    monkeypatch.setattr(graphed.GraphedSteps, "__init__", lambda self, step, enabled: init(self, step, False))
    eager = train_with_bounds(graph, x, y, cfg, points, device="cuda")
    for a, b in zip(replayed.lower + replayed.upper + replayed.nominal, eager.lower + eager.upper + eager.nominal):
        assert torch.equal(a, b)
    cpu = train_with_bounds(graph, x, y, cfg, points)  # the same formulas as the CPU kernels, up to rounding
    for a, b in zip(replayed.lower + replayed.upper, cpu.lower + cpu.upper):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
