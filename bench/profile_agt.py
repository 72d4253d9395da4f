"""Where an AGT step spends its time: torch profiler table (CPU and, on a GPU, CUDA time) for one bench case.

    python bench/profile_agt.py [--case mnist] [--device cuda] [--rows 25]
"""
from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from agt import CASES, _data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="mnist", choices=sorted(CASES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    from pcert.runtime.agt import BudgetPoint, TrainConfig, train_with_bounds
    spec = CASES[args.case]
    graph, x, y = _data(spec)
    b = spec["batch"]
    points = [BudgetPoint(**p) for p in spec["points"]]
    run = lambda epochs: train_with_bounds(graph, x[:b], y[:b], TrainConfig(epochs=epochs, batch=b, lr=0.1),  # noqa: E731
                                           points, method="ibp", device=args.device)
    run(1)  # warm-up: kernels compiled, caches filled
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device != "cpu" else [])
    with profile(activities=activities) as prof:
        run(1)
    key = "self_cuda_time_total" if args.device != "cpu" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
