"""IBP vs CROWN vs crown+ibp: output-bound width and time on MLPs with interval parameters.

Shows where CROWN's back-substitution pays off: IBP's forward interval products lose the
dependencies between layers, which compounds with depth, while CROWN keeps them up to the
concretisation (AGT sec. 3.4: CROWN tends to win on deeper nets, IBP may win on shallow ones).

    python bench/crown.py [--width 64] [--n 256] [--eps 0.01] [--radii 1e-4 1e-3 1e-2 1e-1] [--device cuda]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from pcert.compiler.graph import Layer, LayerGraph
from pcert.runtime.bounds.forward import METHODS, bound_outputs


def mlp(depth: int, width: int, d_in: int, d_out: int, seed: int) -> tuple[LayerGraph, list[torch.Tensor]]:
    """``depth`` linear layers with ReLU between them; He-scaled random weights."""
    gen = torch.Generator().manual_seed(seed)
    dims = [d_in] + [width] * (depth - 1) + [d_out]
    layers, params = [], []
    for k in range(depth):
        w = torch.randn(dims[k + 1], dims[k], generator=gen) * math.sqrt(2.0 / dims[k])
        b = torch.randn(dims[k + 1], generator=gen) * 0.1
        params += [w, b]
        layers.append(Layer("linear", f"fc{k}", (dims[k],), (dims[k + 1],), w.numpy(), b.numpy()))
        if k < depth - 1:
            layers.append(Layer("relu", f"relu{k}", (dims[k + 1],), (dims[k + 1],)))
    return LayerGraph((d_in,), tuple(layers)), params


def run(depths=(2, 4, 6), width=64, n=256, eps=0.01, radii=(1e-4, 1e-3, 1e-2, 1e-1), d_in=16, d_out=10,
        repeats=3, device: str = "cpu") -> list[dict]:
    """Mean output-interval width and best-of-``repeats`` wall time per (depth, radius, method).

    Parameter boxes are theta +- radius * |theta| (one budget point per radius, run together)."""
    rows = []
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for depth in depths:
        graph, params = mlp(depth, width, d_in, d_out, seed=depth)
        params = [p.to(device) for p in params]
        r = torch.tensor(radii, device=device)
        p_lo = [p[None] - r.reshape(-1, *[1] * p.dim()) * p.abs() for p in params]
        p_hi = [p[None] + r.reshape(-1, *[1] * p.dim()) * p.abs() for p in params]
        for method in METHODS:
            best = math.inf
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                lo, hi = bound_outputs(graph, p_lo, p_hi, x - eps, x + eps, method)
                sync()
                best = min(best, time.perf_counter() - t0)
            width_mean = (hi - lo).flatten(1).mean(1)
            for i, radius in enumerate(radii):
                rows.append({"depth": depth, "radius": radius, "method": method,
                             "width": width_mean[i].item(), "seconds": best})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--radii", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 6])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rows = run(depths=tuple(args.depths), width=args.width, n=args.n, eps=args.eps, radii=tuple(args.radii),
               device=args.device)
    print(f"MLP width {args.width}, N={args.n}, input box +-{args.eps}, params theta +- r|theta| "
          f"(all radii in one call; time is per call, {args.device}, {torch.get_num_threads()} threads)")
    print(f"{'depth':>5} {'radius':>8} " + " ".join(f"{m:>12}" for m in METHODS) + "   time ibp/crown/crown+ibp [s]")
    for depth in args.depths:
        for radius in args.radii:
            sel = {r["method"]: r for r in rows if r["depth"] == depth and r["radius"] == radius}
            widths = " ".join(f"{sel[m]['width']:12.4g}" for m in METHODS)
            times = "/".join(f"{sel[m]['seconds']:.3f}" for m in METHODS)
            print(f"{depth:>5} {radius:>8.0e} {widths}   {times}")


if __name__ == "__main__":
    main()
