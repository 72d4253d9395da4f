"""The compiler: checks a Spec against its ONNX model and data and lowers it to a hashed Plan."""
from __future__ import annotations

from pathlib import Path

from pcert.compiler.lower import Resolved, lower
from pcert.compiler.plan import Plan
from pcert.spec.model import Spec

__all__ = ["Plan", "Resolved", "compile_spec", "plan_summary"]


def compile_spec(spec: Spec | str | Path, *, parity: bool = True) -> Resolved:
    """Parse (if given a path), check and lower a spec. Raises UserError subclasses on bad input."""
    if not isinstance(spec, Spec):
        from pcert.spec import load_spec

        spec = load_spec(spec)
    return lower(spec, parity=parity)


def plan_summary(plan: Plan) -> str:
    """A few lines saying what will run."""
    m = plan.meaning
    spec = m["spec"]
    work = m["work"]
    sweep = m["sweep"]
    lines = [f"plan {plan.hash[:12]}  ({Path(plan.provenance['spec_path']).name})"]
    if "model" in m:
        g = m["model"]["graph"]
        ops = "-".join(layer["op"] for layer in g["layers"])
        lines.append(f"  model   {g['num_params']} parameters, {len(g['layers'])} layers ({ops})")
        d = m["data"]
        lines.append(f"  data    {d['descriptor'].get('source', '?')}: {d['n_train']} train / {d['n_test']} test, "
                     f"{d['task']}" + (f", {d['num_classes']} classes" if d["num_classes"] else ""))
        s = m["schedule"]
        lines.append(f"  train   {spec['train']['epochs']} epochs x {s['steps_per_epoch']} steps, batch {spec['train']['batch']}, "
                     f"lr {s['lr_first']:g} -> {s['lr_last']:.4g}, loss {spec['train']['loss']}")
    threat = spec["threat"]
    lines.append(f"  threat  {threat['kind']}; {len(sweep['points'])} sweep point(s) over {', '.join(sweep['names'])}")
    ens = m.get("ensemble")
    if ens:
        lines.append(f"  ensemble {ens['kind']}: {work['members']} members, {work['trainings']} trainings, "
                     f"vote {ens['vote']}, members {ens['member']}, certify {ens['certify']}, {work['milps']} MILP(s)")
    else:
        lines.append(f"  bounds  {spec['bounds']} in {spec['precision']}; {work['steps']} AGT steps, "
                     f"all sweep points in one vectorised run")
    gates = spec.get("gates") or []
    for gate in gates:
        at = "".join(f" at {k} = {v:g}" for k, v in (gate.get("at") or {}).items())
        lines.append(f"  gate    {gate['metric']} {gate['op']} {gate['value']:g}{at}")
    return "\n".join(lines)
