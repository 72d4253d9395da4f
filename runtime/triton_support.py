"""Whether the CUDA kernels written in Triton can be built here."""
from __future__ import annotations

import importlib.util


def available() -> bool:
    """Triton is importable (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (Triton's block shapes)."""
    return 1 << max(0, (n - 1).bit_length())
