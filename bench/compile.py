"""Compile time per example, with and without the ONNX-vs-onnxruntime parity check.

Targets: under 1 s per example without the parity check, under 2 s with it. Imports (torch,
onnxruntime, pyomo) are paid once before timing, as in a long-lived process; the first column
still shows a cold compile of the first example for reference.

    python bench/compile.py
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from pcert.compiler import compile_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def best_of(spec: Path, parity: bool, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compile_spec(spec, parity=parity)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    specs = sorted(EXAMPLES.glob("*.pcert"))
    start = time.perf_counter()
    compile_spec(specs[0], parity=True)
    cold = time.perf_counter() - start
    print(f"cold compile of {specs[0].name} (imports included): {cold:.2f} s\n")
    print(f"{'example':<22}{'no parity [s]':>15}{'parity [s]':>12}   targets: < 1 s / < 2 s")
    rows = []
    for spec in specs:
        plain, checked = best_of(spec, False), best_of(spec, True)
        rows.append((plain, checked))
        ok = "ok" if plain < 1.0 and checked < 2.0 else "MISSED"
        print(f"{spec.name:<22}{plain:>15.3f}{checked:>12.3f}   {ok}")
    print(f"\nmedian {statistics.median(r[0] for r in rows):.3f} s without parity, "
          f"{statistics.median(r[1] for r in rows):.3f} s with parity")


if __name__ == "__main__":
    main()
