"""Large bound tensors without page faults: keep freed heap memory for reuse (glibc malloc).

Interval passes allocate and free tens of megabytes per operation. By default glibc serves such
blocks with fresh mmap pages and unmaps them on free, so every element-wise op first page-faults
its whole output (measured: 4-5x the op itself on a 2-core machine). Serving them from the heap and
never trimming it makes later ops reuse warm pages. Process-wide and Linux/glibc only; set
PCERT_MALLOC_TUNING=0 to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the tuning once; returns whether it is in effect."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("PCERT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
