"""`cover all` reaches the engine: the report says which runs the bounds contain, and they are wider."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pcert import api

from conftest import write_spec


def _run(folder: Path, cover: str) -> tuple[dict, dict]:
    folder.mkdir()
    spec = write_spec(folder, f"cover {cover}\ngate nominal_accuracy >= 0.5")
    outcome = api.run(spec, output=folder / "runs", quiet=True)
    assert outcome.exit_code == 0, outcome.text
    assert api.check(outcome.run_dir).ok
    report = json.loads((outcome.run_dir / "report.json").read_text())
    with np.load(outcome.run_dir / "bounds.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return report, arrays


def test_cover_all_is_recorded_and_contains_the_nominal_cover(tmp_path: Path) -> None:
    nominal, b_nom = _run(tmp_path / "nominal", "nominal")
    everything, b_all = _run(tmp_path / "all", "all")
    assert json.dumps(nominal).count('"cover": "nominal"') >= 1
    assert json.dumps(everything).count('"cover": "all"') >= 1
    lows = [k for k in b_nom if "lower" in k and k.startswith("param")]
    assert lows, sorted(b_nom)
    for lo in lows:
        hi = lo.replace("lower", "upper")
        assert np.all(b_all[lo] <= b_nom[lo]) and np.all(b_all[hi] >= b_nom[hi])
    assert any(np.any(b_all[lo] < b_nom[lo]) for lo in lows)  # the float32 margins are really applied
