"""Plain host threads for numba kernels that release the GIL.

Rather than numba's parallel layer, whose spinning workers fight torch's OpenMP pool on small
machines: one thread per torch thread, each running the kernel on its own range of rows (tasks
write disjoint outputs).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch


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
