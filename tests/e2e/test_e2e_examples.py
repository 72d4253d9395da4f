"""Every example compiles, and its YAML twin (in tests/twins/, elsewhere on disk) has the same plan hash."""
from __future__ import annotations

from pathlib import Path

import pytest

from pcert.compiler import compile_spec, plan_summary

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.pcert"))


def test_every_example_has_a_twin() -> None:
    twins = {p.stem for p in (ROOT / "tests" / "twins").glob("*.yaml")}
    assert {p.stem for p in EXAMPLES} == twins


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_compiles_and_twin_hash_matches(example: Path) -> None:
    plan = compile_spec(example, parity=True).plan
    twin = compile_spec(ROOT / "tests" / "twins" / f"{example.stem}.yaml", parity=False).plan
    assert plan.hash == twin.hash
    assert plan.meaning == twin.meaning
    assert plan.provenance["spec_path"] != twin.provenance["spec_path"]
    assert plan_summary(plan).startswith(f"plan {plan.hash[:12]}")


def test_hash_changes_with_meaning_not_formatting(tmp_path: Path) -> None:
    source = (ROOT / "examples" / "halfmoons.pcert").read_text()
    base = compile_spec(ROOT / "examples" / "halfmoons.pcert", parity=False).plan.hash
    reformatted = tmp_path / "a.pcert"
    reformatted.write_text("# a comment\n" + source.replace("{ train: 3000", "{\n  train: 3000"))
    (tmp_path / "models").symlink_to(ROOT / "examples" / "models")
    assert compile_spec(reformatted, parity=False).plan.hash == base
    changed = tmp_path / "b.pcert"
    changed.write_text(source.replace("lr: 1.0", "lr: 0.9"))
    assert compile_spec(changed, parity=False).plan.hash != base
