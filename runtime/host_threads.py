"""The host side of the numba kernels: their input arrays, and plain threads to run them on.

Threads rather than numba's parallel layer, whose spinning workers fight torch's OpenMP pool on
small machines: one thread per torch thread, each running a kernel (which releases the GIL) on its
own range of rows (tasks write disjoint outputs).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from torch import Tensor


def host_array(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A C-layout host array of ``dtype``; a budget axis broadcast with stride 0 stays one slice (the
    kernels index a length-1 budget axis at 0 for every point)."""
    one = t[:1] if t.shape[0] > 1 and t.stride(0) == 0 else t
    return one.detach().to("cpu", dtype).contiguous().numpy()


class HostThreads:
    """``with HostThreads() as threads: threads.run(fn, n, *args)`` calls fn(*args, first, last)
    over contiguous ranges covering 0..n-1, one per thread, and waits for all of them."""

    def __init__(self) -> None:
        self.workers = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(self.workers)

    def __enter__(self) -> HostThreads:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown()

    def run(self, fn: Callable, n_tasks: int, *args) -> None:
        n = max(1, min(self.workers, n_tasks))
        if n == 1:
            fn(*args, 0, n_tasks)
            return
        cuts = [n_tasks * w // n for w in range(n + 1)]
        list(self._pool.map(lambda w: fn(*args, cuts[w], cuts[w + 1]), range(n)))
