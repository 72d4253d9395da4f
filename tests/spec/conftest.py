"""Fixtures for the spec tests (sample texts live in spec_samples.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from spec_samples import FILES


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    """A folder holding every file the sample specs reference (contents are not read here)."""
    for rel in FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    return tmp_path
