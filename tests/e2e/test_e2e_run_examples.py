"""Every shipped example runs end to end on the CPU, meets its own gates, and passes `pcert check`."""
from __future__ import annotations

from pathlib import Path

import pytest

from pcert import api

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.pcert"))


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_meets_its_gates_and_checks(example: Path, tmp_path: Path) -> None:
    outcome = api.run(example, output=tmp_path, quiet=True)
    assert outcome.exit_code == 0, outcome.text
    assert outcome.verdicts and all(v.passed for v in outcome.verdicts)
    result = api.check(outcome.run_dir)
    assert result.ok, result.render()
