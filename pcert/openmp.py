"""Shorter spin-waits for torch's OpenMP workers; must run before torch is imported.

After each parallel region libgomp's idle workers spin for GOMP_SPINCOUNT iterations (default
300000: 10-15 ms of `pause` on current x86) before they sleep. An AGT step alternates torch ops
with numba top-k kernels that keep every core busy, so each kernel phase starts with torch's
workers spinning on its cores. 30000 iterations (about 1 ms) still bridge the gaps between
back-to-back torch ops. Measured on 2 cores (784-128-10, batch 6000): AGT step 499-516 ms ->
470-485 ms over three interleaved runs each; OMP_WAIT_POLICY=PASSIVE (every op wakes its workers)
gave 507-522 ms. A value the user set wins; once torch is loaded the call changes nothing.
"""
from __future__ import annotations

import os
import sys

SPIN_COUNT = "30000"


def shorten_openmp_spinning() -> bool:
    """Set GOMP_SPINCOUNT for this process and its children; returns whether it can still take effect."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return True
