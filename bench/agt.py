"""AGT cost against plain SGD, side by side: time per step and peak memory.

Cases: halfmoons 2-128-2 full batch; a 784-128-10 MLP on 60000 synthetic samples, batch 6000; a
small conv net; and a 5-point budget sweep against one budget. Each case runs in a fresh process,
so the peak resident memory (ru_maxrss) is that case's own.

    python bench/agt.py [--cases moons,mnist,conv,sweep] [--steps 5] [--device cpu]

An AGT step's cost changes along training (the pruning of the top-k depends on the bounds), so the
table gives the mean and the slowest of the timed steps, never a median that could hide slow ones.
The warm-up steps are timed apart ('warm-up [s]', their total): the first step (kernels compiled,
caches filled) and, on CUDA, the second, which captures the step as a CUDA graph that later steps
replay. The sweep line splits its step into shared work S and work per point P (one budget costs
S + P, five S + 5 P; P is the mean over the four added points): the sweep is at most 2x one budget
only where P <= S / 3.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import queue as queue_mod
import resource
import time

from pcert.openmp import shorten_openmp_spinning

shorten_openmp_spinning()  # as the CLI does; inherited by every case's process, the plain step's too

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CASES = {
    "moons": dict(arch=[2, 128, 2], n=3000, batch=3000, points=[dict(n=10, eps=0.01)]),
    "mnist": dict(arch=[784, 128, 10], n=60000, batch=6000, points=[dict(n=10, eps=0.01)]),
    "conv": dict(arch="1x12x12 -> 8c3 -> relu -> 8c3s2 -> relu -> flatten -> 10", n=2000, batch=500,
                 points=[dict(n=5, eps=0.01)]),
    "sweep": dict(arch=[784, 128, 10], n=60000, batch=6000,
                  points=[dict(n=1, eps=0.01), dict(n=5, eps=0.01), dict(n=10, eps=0.01), dict(m=5), dict(m=10)]),
}


def case_points(name: str, one_budget: bool = False) -> list[dict]:
    """A case's budget points; ``one_budget``: a sweep's single point of comparison (n = 10, eps = 0.01)."""
    points = CASES[name]["points"]
    return points[2:3] if one_budget and name == "sweep" else points


def _data(spec, seed=0):
    from pcert.compiler.model_builder import build_conv, build_mlp
    graph = build_mlp(spec["arch"], seed=0) if isinstance(spec["arch"], list) else build_conv(spec["arch"], seed=0)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(spec["n"], *graph.input_shape)).astype(np.float32)
    y = rng.integers(0, graph.output_shape[0], spec["n"])
    return graph, x, y


def _plain_step_seconds(graph, x, y, batch, device, reps=100, warmup=50):
    from pcert.compiler.torch_model import to_torch
    model = to_torch(graph).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xb = torch.as_tensor(x[:batch], device=device)
    yb = torch.as_tensor(y[:batch], device=device)
    times = []
    for _ in range(warmup + reps):  # the warm-up also lets a GPU leave its idle clocks
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[warmup:]))


def _agt_step_seconds(graph, x, y, spec, points, method, device, steps):
    from pcert.runtime.agt import BudgetPoint, TrainConfig, train_with_bounds
    b = spec["batch"]
    warm = 1 if device == "cpu" else 2  # see the module docstring
    cfg = TrainConfig(epochs=steps + warm, batch=b, lr=0.1)  # one batch per epoch
    stamps = [time.perf_counter()]
    train_with_bounds(graph, x[:b], y[:b], cfg, [BudgetPoint(**p) for p in points], method=method, device=device,
                      progress=lambda t, total: stamps.append(time.perf_counter()))
    steps_s = np.diff(stamps[warm:])
    return float(np.mean(steps_s)), float(np.max(steps_s)), stamps[warm] - stamps[0]


def _run_case(name, method, device, steps, queue):
    from pcert.runtime.memory import retain_freed_memory
    retain_freed_memory()  # the engine's allocator setting, for the plain step too: a like-for-like ratio
    spec = CASES[name]
    graph, x, y = _data(spec)
    torch.manual_seed(0)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    out = {"case": name, "method": method}
    if method == "plain":
        out["step_s"] = out["max_s"] = _plain_step_seconds(graph, x, y, spec["batch"], device)
        out["warm_s"] = math.nan
    else:
        points = case_points(name, one_budget=method == "ibp x1")
        out["step_s"], out["max_s"], out["warm_s"] = _agt_step_seconds(graph, x, y, spec, points,
                                                                       method.split(" ")[0], device, steps)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else 0.0
    queue.put(out)


def _in_process(name, method, device, steps):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_case, args=(name, method, device, steps, queue))
    proc.start()
    while True:  # a case whose process died (an exception, out of memory) ends the bench, not hangs it
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                raise SystemExit(f"bench: case {name} ({method}) failed, exit code {proc.exitcode}")
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="moons,mnist,conv,sweep")
    ap.add_argument("--steps", type=int, default=5, help="timed AGT steps per case (after the warm-up steps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crown", action="store_true", help="also time method crown+ibp")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'case':8s} {'method':16s} {'step [s]':>10s} {'x plain':>8s} {'max [s]':>9s} {'warm-up [s]':>12s} "
          f"{'peak RSS MiB':>13s} {'peak CUDA MiB':>14s}")
    for name in args.cases.split(","):
        methods = ["plain", "ibp"] + (["crown+ibp"] if args.crown else [])
        if name == "sweep":
            methods = ["plain", "ibp x1", "ibp x5"]
        rows = [_in_process(name, m, args.device, args.steps) for m in methods]
        plain = rows[0]["step_s"]
        for r in rows:
            warm = "" if math.isnan(r["warm_s"]) else f"{r['warm_s']:.2f}"
            print(f"{name:8s} {r['method']:16s} {r['step_s']:10.4f} {r['step_s'] / plain:8.1f} {r['max_s']:9.4f} "
                  f"{warm:>12s} {r['peak_rss_mib']:13.0f} {r['peak_cuda_mib']:14.0f}")
        if name == "sweep":
            one, five = rows[1]["step_s"], rows[2]["step_s"]
            per_point = (five - one) / 4  # one = S + P, five = S + 5 P
            print(f"{'':8s} 5-point sweep / one budget = {five / one:.2f}; per point P = {per_point:.4f} s, "
                  f"shared S = {one - per_point:.4f} s (2x needs P <= S / 3)")


if __name__ == "__main__":
    main()
