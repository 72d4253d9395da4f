"""What the CUDA kernels written in Triton need to know: whether they can be built here, and
their block and grid sizes."""
from __future__ import annotations

import importlib.util
from functools import cache

import torch


@cache
def available() -> bool:
    """Triton is importable (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (Triton's block shapes)."""
    return 1 << max(0, (n - 1).bit_length())


def multiprocessors(device: torch.device) -> int:
    """The device's SM count (grids are sized to fill it); 1 off CUDA (Triton's interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
