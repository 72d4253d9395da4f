"""Synthetic, self-consistent run records for the report tests (tiny MLPs, interval bounds
from ``pcert.runtime.bounds.forward.bound_outputs``, metrics written independently here)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcert.compiler.model_builder import build_mlp
from pcert.compiler.onnx_export import graph_to_onnx
from pcert.compiler.plan import plan_hash
from pcert.runtime.report import BoundsRecord, EnsembleRecord, PlaneRecord, RunRecord, evaluate_gates
from pcert.runtime.report.sidecar import array_sha256, read_npz, write_npz
from pcert.runtime.report.writer import file_sha256
from pcert.runtime.run_ensemble import milp_records


def forward_bounds():
    from pcert.runtime.bounds.forward import bound_outputs
    return bound_outputs


def _t(arrays):
    return [torch.as_tensor(a) for a in arrays]


def certify_flags(lo, hi, target):
    """Strict separation: lo[target] > hi[c] for every other class c."""
    t_lo = np.take_along_axis(lo, target[None, :, None], axis=2)
    others = np.where(np.arange(lo.shape[2])[None, None] == target[None, :, None], -np.inf, hi)
    return (t_lo[..., 0] > others.max(axis=2))


def _metrics(kind, lo, hi, n_out, pred, y, cert):
    """Per-point metrics written independently of the checker (vertex/box formulas)."""
    from scipy.special import logsumexp
    out = []
    for p in range(lo.shape[0]):
        if kind == "regression":
            dev = np.maximum(np.abs(lo[p] - y), np.abs(hi[p] - y))
            inside = (lo[p] <= y) & (y <= hi[p])
            near = np.minimum(np.abs(lo[p] - y), np.abs(hi[p] - y))
            out.append({"worst_case_mse": float(np.mean(dev ** 2)), "best_case_mse": float(np.mean(np.where(inside, 0, near) ** 2)),
                        "nominal_mse": float(np.mean((n_out - y) ** 2))})
            continue
        acc = float((pred == y).mean())
        if kind == "targeted":
            out.append({"certified_accuracy": float(cert[p].mean()), "nominal_accuracy": acc})
        elif kind == "backdoor":
            out.append({"backdoor_certified_accuracy": float(cert[p].mean()), "nominal_accuracy": acc})
        elif kind == "untargeted_accuracy":
            out.append({"worst_case_accuracy": float((cert[p] & (pred == y)).mean()), "nominal_accuracy": acc})
        else:                                             # untargeted cross-entropy: worst logits at a vertex
            rows = np.arange(len(y))
            worst = hi[p].astype(np.float64).copy()
            worst[rows, y] = lo[p][rows, y]
            out.append({"worst_case_cross_entropy": float(np.mean(logsumexp(worst, axis=1) - worst[rows, y])),
                        "nominal_cross_entropy": float(np.mean(logsumexp(n_out.astype(np.float64), axis=1) - n_out[rows, y]))})
    return out


OBJECTIVES = {"targeted": {"kind": "targeted"}, "backdoor": {"kind": "backdoor", "eps": 0.05, "norm": "inf"},
              "untargeted_accuracy": {"kind": "untargeted", "metric": "accuracy"},
              "untargeted_ce": {"kind": "untargeted", "metric": "cross_entropy"},
              "regression": {"kind": "untargeted", "metric": "mse"}}


def single_record(seed: int = 0, radii=(0.0, 0.002, 0.05), n_test: int = 24, plane: bool = True,
                  kind: str = "targeted") -> RunRecord:
    rng = np.random.default_rng(seed)
    regression = kind == "regression"
    graph = build_mlp([2, 8, 1 if regression else 3], seed=seed)
    nominal = [a.astype(np.float32) for layer in graph.parametric_layers for a in (layer.weight, layer.bias)]
    P = len(radii)
    widths = [np.stack([r * rng.random(n.shape).astype(np.float32) for r in radii]) for n in nominal]
    lower = [n[None] - w for n, w in zip(nominal, widths)]
    upper = [n[None] + w for n, w in zip(nominal, widths)]
    fwd = forward_bounds()
    x = rng.normal(size=(n_test, 2)).astype(np.float32)
    n_out = fwd(graph, _t([n[None] for n in nominal]), _t([n[None] for n in nominal]), torch.as_tensor(x),
                torch.as_tensor(x))[0].numpy()[0]
    x_lo, x_hi = (x - 0.05, x + 0.05) if kind == "backdoor" else (x, x)
    lo, hi = (a.numpy() for a in fwd(graph, _t(lower), _t(upper), torch.as_tensor(x_lo), torch.as_tensor(x_hi)))
    if regression:
        y = (n_out + rng.normal(scale=0.1, size=n_out.shape)).astype(np.float32)
        pred, cert = n_out, (np.isfinite(lo) & np.isfinite(hi)).all(axis=2)   # engine: certified = bounded
    else:
        pred = n_out.argmax(axis=1)
        y = pred.copy()
        y[::5] = (y[::5] + 1) % 3                    # some nominally wrong points
        if kind.startswith("untargeted"):
            cert = certify_flags(lo, hi, pred)
        else:
            cert = certify_flags(lo, hi, y) & (pred == y)[None]
    points = [{"n": i, "eps": 0.01} for i in range(P)]
    metrics = _metrics(kind, lo, hi, n_out, pred, y, cert)
    summary = {name: [{"point": points[p], "value": metrics[p][name]} for p in range(P)] for name in metrics[0]}
    steps = [{"step": t, "epoch": 0, "lr": 0.1,
              "width": [[{"min": 0.0, "mean": r * t / 10, "max": r * t / 5} for _ in graph.parametric_layers]
                        for r in radii]}
             for t in range(6)]
    plane_record = None
    if plane and not regression:
        gx, gy = np.linspace(-2, 2, 16, dtype=np.float32), np.linspace(-2, 2, 12, dtype=np.float32)
        grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
        g_lo, g_hi = (a.numpy() for a in fwd(graph, _t(lower), _t(upper), torch.as_tensor(grid), torch.as_tensor(grid)))
        g_pred = (g_lo[0] + g_hi[0]).argmax(axis=1)
        plane_record = PlaneRecord(x=gx, y=gy, prediction=g_pred.reshape(12, 16),
                                   certified=certify_flags(g_lo, g_hi, g_pred).reshape(P, 12, 16))
    bounds = BoundsRecord(
        method="ibp", task="regression" if regression else "classification", objective=OBJECTIVES[kind], steps=steps,
        first_nonfinite_step=[None] * P, lower=lower, upper=upper, nominal=nominal, x_test=x, y_test=y,
        output_lower=lo, output_upper=hi, nominal_output=n_out, prediction=pred, certified=cert,
        objective_values=metrics, plane=plane_record,
        input_lower=x_lo if kind == "backdoor" else None, input_upper=x_hi if kind == "backdoor" else None)
    meaning = {"spec": {"model": "m.onnx", "seed": seed}, "sweep": points}
    record = RunRecord(
        spec_text=f"pcert 1\nmodel \"m.onnx\"\nseed {seed}\n", spec_path="moons.pcert",
        plan={"plan_version": 1, "meaning": meaning, "provenance": {}, "hash": plan_hash(meaning)},
        plan_hash=plan_hash(meaning), onnx_bytes=graph_to_onnx(graph),
        data_descriptor={"source": "synthetic", "seed": seed}, data_sha256="0" * 64, points=points,
        summary=summary, gates=[{"metric": next(iter(summary)), "op": ">=", "value": 0.5, "at": {"n": 1}}],
        device="cpu", dtype="float32", arithmetic={"rounding": "none (test)"}, seed=seed,
        timings={"train": 0.1, "certify": 0.01}, bounds=bounds)
    record.verdicts = [v.to_dict() for v in evaluate_gates(record.summary, record.gates)]
    return record


def ensemble_record(seed: int = 0, Ks=(0, 1, 2)) -> RunRecord:
    """Plurality DPA ensemble: per-sample radii from the Levine-Feizi gap formula (written here),
    multi-sample certificates from the ensemble helper's MILP (with MPS files)."""
    import tempfile

    from pcert.runtime.ensemble.multi_sample import certify_multi_sample
    rng = np.random.default_rng(seed)
    N, M, C = 12, 7, 3
    truth = rng.integers(0, C, N)
    votes = np.where(rng.random((N, M)) < 0.7, truth[:, None], rng.integers(0, C, (N, M)))
    labels = truth.copy()
    labels[::5] = (labels[::5] + 1) % C                # some points the ensemble gets wrong
    counts = np.stack([(votes == c).sum(1) for c in range(C)], axis=1)
    pred = counts.argmax(1)
    runner = np.where(np.arange(C)[None] == pred[:, None], -1, counts + (np.arange(C)[None] < pred[:, None]))
    radius = (counts[np.arange(N), pred] - runner.max(1)) // 2
    cert = np.where(pred == labels, radius, -1)
    points = [{"K": k} for k in Ks]
    milp, mps_files, multi = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for K in Ks:
            result = certify_multi_sample(votes, labels, K, batch=5, solver="milp", mps_dir=f"{tmp}/{K}",
                                          num_classes=C)
            multi[K] = result.certified_fraction
            records, files = milp_records(result, Path(tmp, str(K)))
            milp += records
            mps_files |= files
    summary = {"per_sample_certified_accuracy": [{"point": {"K": k}, "value": float((cert >= k).mean())} for k in Ks],
               "nominal_accuracy": [{"point": {"K": k}, "value": float((pred == labels).mean())} for k in Ks],
               "multi_sample_certified_accuracy": [{"point": {"K": k}, "value": multi[k]} for k in Ks]}
    record = single_record(seed, plane=False)
    record.bounds = None
    record.points, record.summary, record.mps_files = points, summary, mps_files
    record.gates = [{"metric": "multi_sample_certified_accuracy", "op": ">=", "value": 0.3, "at": {"K": 1}}]
    record.ensemble = EnsembleRecord(scheme="dpa", vote="plurality", num_classes=C, votes=votes, labels=labels,
                                     prediction=pred, certificates=cert, milp=milp)
    record.verdicts = [v.to_dict() for v in evaluate_gates(record.summary, record.gates)]
    return record


def report_json(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def save_report_json(run: Path, report: dict) -> None:
    from pcert.runtime.report.encoding import dumps
    (run / "report.json").write_text(dumps(report))


def tamper_sidecar(run: Path, edit) -> None:
    """Apply ``edit(arrays)`` to the sidecar and re-pin every hash honestly, so only a
    recomputation (not a hash comparison) can notice."""
    arrays = read_npz(run / "bounds.npz")
    edit(arrays)
    write_npz(run / "bounds.npz", arrays)
    report = report_json(run)
    for name, array in arrays.items():
        report["sidecar"]["arrays"][name] = {"shape": list(array.shape), "dtype": array.dtype.str,
                                             "sha256": array_sha256(array)}
    report["sidecar"]["sha256"] = file_sha256(run / "bounds.npz")
    save_report_json(run, report)


def scored_ensemble_record(scheme: str, vote: str, seed: int = 3) -> RunRecord:
    """An ensemble from member scores (ROE needs them; FA adds a spread map), certified with the
    ensemble helper's per-sample and multi-sample certifiers."""
    import tempfile

    from pcert.runtime.ensemble.multi_sample import certify_multi_sample
    from pcert.runtime.ensemble.outputs import member_outputs
    from pcert.runtime.ensemble.per_sample import per_sample_certificate
    from pcert.runtime.ensemble.voting import predict
    rng = np.random.default_rng(seed)
    N, M, C = 10, 6, 3
    labels = rng.integers(0, C, N)
    scores = rng.normal(size=(N, M, C))
    scores[np.arange(N), :, labels] += 1.2
    spread = np.array([[j, (j + 1) % M] for j in range(M)]) if scheme == "fa" else None
    ens = member_outputs(scores, scheme=scheme, spread=spread)
    cert = per_sample_certificate(ens, labels, vote)
    milp, mps_files, points = [], {}, [{"K": 1}, {"K": 2}]
    with tempfile.TemporaryDirectory() as tmp:
        for K in (1, 2):
            result = certify_multi_sample(scores, labels, K, scheme=scheme, vote=vote, spread=spread, batch=5,
                                          solver="milp", mps_dir=f"{tmp}/{K}")
            records, files = milp_records(result, Path(tmp, str(K)))
            milp += records
            mps_files |= files
    record = ensemble_record(seed)
    record.points, record.mps_files, record.gates, record.verdicts = points, mps_files, [], []
    record.summary = {"per_sample_certified_accuracy": [{"point": p, "value": float((cert >= p["K"]).mean())}
                                                        for p in points]}
    record.ensemble = EnsembleRecord(scheme=scheme, vote=vote, num_classes=C, votes=ens.votes, labels=labels,
                                     prediction=predict(ens.votes, ens.scores, C, vote), certificates=cert,
                                     scores=scores, spread=spread, milp=milp)
    return record


@pytest.fixture(autouse=True)
def quick_html(monkeypatch):
    """Figures are tested in test_report_html; the checker never reads report.html."""
    import pcert.runtime.report.writer as writer
    monkeypatch.setattr(writer, "render_html", lambda report, arrays: "<html></html>\n")


def failures(run_dir) -> str:
    """The check's failure lines for a run that must fail."""
    from pcert.runtime.report import check_run
    result = check_run(run_dir)
    assert not result.ok
    return "\n".join(result.failures)
