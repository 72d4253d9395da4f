"""Where an AGT step spends its time: its parts (``pcert::`` ranges) against a plain SGD step, then the
torch profiler's op table (CPU and, on a GPU, CUDA time), for one bench case.

    python bench/profile_agt.py [--case mnist] [--one-budget] [--steps 4] [--device cuda] [--rows 25]

The parts are timed on the CPU only (replayed CUDA graph steps run no host code), and profiling
slows a step, so read them as shares. ``--one-budget`` runs a sweep case at its single budget (as
``agt.py``'s 'ibp x1'); comparing the part table of ``--case sweep`` with and without it splits a
step into shared and per-point work.
"""
from __future__ import annotations

import argparse

from pcert.openmp import shorten_openmp_spinning

shorten_openmp_spinning()  # as the CLI and agt.py do

from torch.profiler import ProfilerActivity, profile  # noqa: E402

from agt import CASES, _data, _plain_step_seconds, case_points  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="mnist", choices=sorted(CASES))
    ap.add_argument("--one-budget", action="store_true", help="a sweep case at its single budget point")
    ap.add_argument("--steps", type=int, default=4, help="profiled steps (after one warm-up run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    from pcert.runtime.agt import BudgetPoint, TrainConfig, train_with_bounds
    from pcert.runtime.memory import retain_freed_memory
    retain_freed_memory()  # the engine's allocator setting, as in agt.py
    spec = CASES[args.case]
    graph, x, y = _data(spec)
    b = spec["batch"]
    points = [BudgetPoint(**p) for p in case_points(args.case, one_budget=args.one_budget)]
    run = lambda epochs: train_with_bounds(graph, x[:b], y[:b], TrainConfig(epochs=epochs, batch=b, lr=0.1),  # noqa: E731
                                           points, method="ibp", device=args.device)
    run(1)  # warm-up: kernels compiled, caches filled
    plain = _plain_step_seconds(graph, x, y, b, args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device != "cpu" else [])
    with profile(activities=activities) as prof:
        run(args.steps)
    events = prof.key_averages()
    print(f"{args.case}, {len(points)} budget point(s), {args.steps} steps; plain SGD step {plain * 1e3:.1f} ms")
    if args.device == "cpu":
        print(f"{'part (host wall time)':28s} {'ms/step':>9s} {'x plain':>8s}")
        for e in sorted((e for e in events if e.key.startswith("pcert::")), key=lambda e: -e.cpu_time_total):
            ms = e.cpu_time_total / 1e3 / args.steps
            print(f"{e.key:28s} {ms:9.1f} {ms / 1e3 / plain:8.1f}")
    else:  # a replayed CUDA graph runs no host code, so the named parts would cover the eager steps only
        print("(parts: CPU only; on CUDA see the op table)")
    key = "self_cuda_time_total" if args.device != "cpu" else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
