"""Time to proven optimality of the exact multi-sample certificate on CIFAR-10-like votes.

Synthetic votes shaped like the thesis's CIFAR-10 setting (M = 50 members, 10 classes, member
accuracy ~0.65 with correlated errors, ensemble accuracy ~0.7): each test point has a difficulty
(the probability that a member is right) and a confusing class that wrong members favour.
FA: M = 50, d = 16 (800 members and partitions). Single-threaded HiGHS. Prints pcert's time next to the thesis's Gurobi time.
``auto`` solves the DPA cases by branch-and-bound over poisoned member sets (one core) and FA by
enumeration or the MILP; ``--solver milp`` times HiGHS alone.

    python bench/milp.py [--solver auto|milp|enumerate|branch_bound] [--cases dpa3,dpa5,dpa10,dpa20,fa] [--fa-k 10]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from pcert.runtime.ensemble.multi_sample import certify_multi_sample
from pcert.runtime.ensemble.partition import fa_spread

THESIS_GUROBI_S = {"dpa3": 694.0, "dpa5": 1439.0, "dpa10": 547.0, "dpa20": 285.0, "fa": None}
CASES = {"dpa3": (1000, 3), "dpa5": (1000, 5), "dpa10": (400, 10), "dpa20": (200, 20), "fa": (100, None)}


def cifar_like_votes(n: int, members: int = 50, classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    p_right = rng.beta(0.85, 0.45, n)                        # per-point difficulty
    confuser = (labels + rng.integers(1, classes, n)) % classes
    right = rng.uniform(size=(n, members)) < p_right[:, None]
    to_confuser = rng.uniform(size=(n, members)) < 0.75       # correlated errors
    wrong = np.where(to_confuser, confuser[:, None], (labels[:, None] + rng.integers(1, classes, (n, members))) % classes)
    return np.where(right, labels[:, None], wrong), labels


def fa_case(n: int, base: int = 50, d: int = 16, seed: int = 0):
    """FA as in the thesis: M*d = 800 partitions and members, each partition spread to d members."""
    votes, labels = cifar_like_votes(n, base * d, seed=seed)
    return votes, labels, fa_spread(base, d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--time-limit", type=float, default=3600.0)
    ap.add_argument("--fa-k", type=int, default=10)
    args = ap.parse_args()
    print(f"{'case':<8}{'B':>6}{'K':>4}{'member acc':>12}{'ens acc':>9}{'per-sample':>11}{'multi':>7}"
          f"{'status':>12}{'pcert s':>9}{'gurobi s':>10}{'ratio':>8}")
    for name in args.cases.split(","):
        b, k = CASES[name]
        if name == "fa":
            votes, labels, spread = fa_case(b)
            k, kw = args.fa_k, dict(scheme="fa", spread=spread)
        else:
            votes, labels = cifar_like_votes(b)
            kw = {}
        t0 = time.perf_counter()
        res = certify_multi_sample(votes, labels, k, num_classes=10, solver=args.solver,
                                   time_limit=args.time_limit, **kw)
        dt = time.perf_counter() - t0
        member_acc = float((votes == labels[:, None]).mean())
        counts = np.stack([(votes == c).sum(1) for c in range(10)], 1)
        ens_acc = float((counts.argmax(1) == labels).mean())
        bt = res.batches[0]
        ref = THESIS_GUROBI_S[name]
        ratio = f"{ref / dt:8.0f}x" if ref else "       -"
        print(f"{name:<8}{b:>6}{k:>4}{member_acc:>12.3f}{ens_acc:>9.3f}{res.per_sample_certified:>11}"
              f"{res.certified_count:>7}{bt.status:>12}{dt:>9.2f}{(ref or float('nan')):>10.0f}{ratio}"
              f"   [{bt.method}, {bt.conditioned} conditioned]")


if __name__ == "__main__":
    main()
