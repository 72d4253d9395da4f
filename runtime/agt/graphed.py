"""Replaying an AGT step as a CUDA graph.

An AGT step is a few thousand small tensor operations. On a GPU their launch cost on the host
(~10 us each) exceeds the device time of the whole step, so the device mostly waits. A step whose
shapes repeat (every full batch) is captured once as a CUDA graph and replayed: one launch per
step. The step must read its per-step inputs only from the tensors it is given and update its
state in place (the graph replays the same addresses); ``training._train``'s step does. The first
step of each batch size runs eagerly (it also warms caches and compiles kernels); a step that
cannot be captured (a host synchronisation inside it) keeps running eagerly.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


class GraphedSteps:
    """Runs ``step(idx, idx_np, lr)``, as a replayed CUDA graph where possible."""

    def __init__(self, step: Callable[[Tensor, np.ndarray, Tensor], None], enabled: bool) -> None:
        self.step, self.enabled = step, enabled
        self.seen: set[int] = set()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def __call__(self, idx: Tensor, idx_np: np.ndarray, lr: float) -> None:
        b = idx.numel()
        if b in self.graphs:
            graph, idx_in, lr_in = self.graphs[b]
            idx_in.copy_(idx)
            lr_in.fill_(lr)
            graph.replay()
            return
        if not self.enabled or b not in self.seen:
            self.seen.add(b)
            self.step(idx, idx_np, torch.tensor(lr, dtype=torch.float64))  # a host scalar: no upload
            return
        idx_in, lr_in = idx.clone(), torch.full((), lr, dtype=torch.float64, device=idx.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step(idx_in, idx_np, lr_in)
        except RuntimeError:  # something in the step synchronises with the host: stay eager
            torch.cuda.synchronize()
            self.enabled = False
            self.step(idx, idx_np, torch.tensor(lr, dtype=torch.float64))
            return
        self.graphs[b] = (graph, idx_in, lr_in)
        graph.replay()
