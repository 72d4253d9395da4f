"""The public Python API: everything the CLI does is one call here.

    from pcert import api
    plan_path, summary = api.compile_to_file("examples/halfmoons.pcert")
    outcome = api.run("examples/halfmoons.pcert", quiet=True)
    assert api.check(outcome.run_dir).ok
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcert.compiler import Plan, Resolved, compile_spec, plan_summary
from pcert.errors import UserError

SPEC_SUFFIXES = (".pcert", ".yaml", ".yml")


@dataclass
class RunOutcome:
    run_dir: Path
    verdicts: list[Any]
    exit_code: int
    text: str
    summary: dict[str, Any] = field(default_factory=dict)


def compile_to_file(spec_path: str | Path, *, output: str | Path | None = None, parity: bool = True) -> tuple[Path, str]:
    """Compile a spec and write `<stem>.plan.json`; returns the path and a short summary."""
    resolved = compile_spec(Path(spec_path), parity=parity)
    folder = Path(output) if output is not None else Path(resolved.plan.provenance["output"])
    path = resolved.plan.write(folder / f"{Path(spec_path).stem}.plan.json")
    return path, plan_summary(resolved.plan)


def load_plan(plan_path: str | Path) -> Resolved:
    """Re-resolve a written plan: its spec is compiled again and must give the same hash."""
    from pcert.spec import parse_spec

    path = Path(plan_path)
    try:
        plan = Plan.from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read plan {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not a pcert plan: {str(exc).splitlines()[0]}") from None
    spec_path = plan.provenance["spec_path"]
    fmt = "yaml" if spec_path.endswith((".yaml", ".yml")) else "pcert"
    spec = parse_spec(plan.provenance["spec_text"], path=spec_path, fmt=fmt)
    resolved = compile_spec(spec, parity=bool(plan.provenance.get("parity_checked", True)))
    if resolved.plan.hash != plan.hash:
        raise UserError(f"plan {path} is stale: its model, data or spec changed since it was compiled "
                        f"(hash {plan.hash[:12]} -> {resolved.plan.hash[:12]}); compile again")
    return resolved


def resolve_target(target: str | Path) -> Resolved:
    target = Path(target)
    if target.suffix in SPEC_SUFFIXES:
        return compile_spec(target)
    if target.suffix == ".json":
        return load_plan(target)
    raise UserError(f"{target}: expected a spec ({', '.join(SPEC_SUFFIXES)}) or a plan (.json)")


def run(target: str | Path, *, device: str | None = None, seed: int | None = None,
        output: str | Path | None = None, quiet: bool = False, junit: str | Path | None = None) -> RunOutcome:
    """Compile if needed, execute the plan, write a new run directory atomically, evaluate gates."""
    from pcert.runtime.execute import execute
    from pcert.runtime.report import evaluate_gates, format_summary, write_junit, write_report

    resolved = resolve_target(target)
    record = execute(resolved, device=device, seed=seed, quiet=quiet)
    verdicts = evaluate_gates(record.summary, record.gates)
    record.verdicts = [v.to_dict() for v in verdicts]
    root = Path(output) if output is not None else Path(resolved.plan.provenance["output"])
    run_dir = write_report(record, root)
    if junit is not None:
        write_junit(verdicts, Path(junit))
    failed = [v for v in verdicts if not v.passed]
    from pcert.runtime.report import load_report

    lines = [format_summary(load_report(run_dir)), f"report: {run_dir}"]
    lines += [f"GATE FAILED: {v.message}" for v in failed]
    return RunOutcome(run_dir=run_dir, verdicts=verdicts, exit_code=1 if failed else 0,
                      text="\n".join(lines), summary=record.summary)


def check(run_dir: str | Path):
    """Independently re-verify a run directory (hashes, bounds, flags, aggregates, MILPs)."""
    from pcert.runtime.report import check_run

    return check_run(Path(run_dir))


def report(run_dir: str | Path) -> str:
    from pcert.runtime.report import format_summary, load_report

    return format_summary(load_report(Path(run_dir)))


def build_model(kind: str, layout: str, output: str | Path, *, seed: int = 0, activation: str = "relu") -> Path:
    """Write a seeded ONNX architecture (`pcert model mlp 2,128,2 -o m.onnx`)."""
    from pcert.compiler.model_builder import build_from_layout
    from pcert.compiler.onnx_export import save_onnx

    graph = build_from_layout(kind, layout, seed=seed, activation=activation)
    path = Path(output)
    save_onnx(graph, path)
    return path
