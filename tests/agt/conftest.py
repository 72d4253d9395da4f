"""Shared AGT test fixtures."""
import pytest

from pcert.runtime.bounds import interval


@pytest.fixture(params=["float64 radius", "float32 radius"])
def radius_products(request, monkeypatch) -> str:
    """Runs a test as it is and with the float32 radius products of large float64 layers
    (``interval.abs_matmul_up``) forced on for its small ones."""
    if request.param == "float32 radius":
        monkeypatch.setattr(interval, "_FAST_RADIUS_MACS", 0)
    return request.param
