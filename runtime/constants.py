"""Small constant tensors, made once per device.

Creating a tensor from Python values on a GPU copies from pageable host memory, which blocks
until the stream has drained: a few of them per step serialise the host and the device. Cached,
each distinct constant is uploaded once per run. Callers must not modify the returned tensors.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=1024)
def constant(values: float | tuple, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, shared (read-only)."""
    return torch.tensor(values, dtype=dtype, device=device)
