"""Self-contained ``report.html``: tables plus matplotlib figures embedded as base64 PNGs.

No external links, scripts or files, so the report can be archived and opened anywhere.
Figures (each an ``<img alt="...">``, present when the run has the data):
``metrics versus budget``, ``parameter-bound width over training`` (AGT paper Fig. 2 style),
``per-sample vs multi-sample certified accuracy versus K`` (ensembles) and
``certified regions over the input plane`` (2-D inputs, AGT paper Fig. 1 style).
"""
from __future__ import annotations

import base64
import io
from html import escape
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .encoding import decode_number  # noqa: E402
from .summary import gate_lines, metric_table, point_label, swept_keys  # noqa: E402

ALT_METRICS = "metrics versus budget"
ALT_WIDTH = "parameter-bound width over training"
ALT_ENSEMBLE = "per-sample vs multi-sample certified accuracy versus K"
ALT_PLANE = "certified regions over the input plane"

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}td:first-child,th:first-child{text-align:left}
.pass{color:#1a7f37}.fail{color:#c62828;font-weight:bold}pre{background:#f5f5f5;padding:1em;overflow:auto}
img{max-width:100%}"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Any, alt: str) -> str:
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{_png(fig)}"><figcaption>{escape(alt)}</figcaption></figure>'


def _budget_axis(points: list[Mapping[str, Any]]) -> tuple[str, list[float], list[str]]:
    """x axis for a sweep: the one budget that varies, else the point index with labels."""
    keys = sorted({k for p in points for k in p})
    varying = [k for k in keys if len({str(p.get(k)) for p in points}) > 1]
    labels = [point_label(p, varying or None) for p in points]
    if len(varying) == 1:
        return varying[0], [decode_number(p.get(varying[0], "nan")) for p in points], labels
    return "sweep point", [float(i) for i in range(len(points))], labels


def _metrics_figure(summary: Mapping[str, list]) -> str | None:
    groups = {"accuracy": [m for m in sorted(summary) if "accuracy" in m],
              "loss": [m for m in sorted(summary) if "accuracy" not in m]}
    groups = {k: v for k, v in groups.items() if v}
    if not any(len(summary[m]) for ms in groups.values() for m in ms):
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (kind, metrics) in zip(axes[0], groups.items()):
        for metric in metrics:
            entries = summary[metric]
            name, xs, labels = _budget_axis([e["point"] for e in entries])
            ys = [decode_number(e["value"]) for e in entries]
            ax.plot(xs, np.where(np.isfinite(ys), ys, np.nan), marker="o", label=metric)
            if name == "sweep point":
                ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=7)
            ax.set_xlabel(name)
        ax.set_ylabel("certified / nominal accuracy" if kind == "accuracy" else "loss bound")
        ax.grid(alpha=.3)
        ax.legend(fontsize=7)
    return _img(fig, ALT_METRICS)


def _width_figure(bounds: Mapping[str, Any], points: list[Mapping[str, Any]]) -> str | None:
    steps = bounds.get("steps") or []
    if not steps or not steps[0].get("width"):
        return None
    num_layers = len(steps[0]["width"][0])
    step_ids = [s["step"] for s in steps]
    fig, axes = plt.subplots(1, num_layers, figsize=(4 * num_layers, 3.4), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        for p in range(len(steps[0]["width"])):
            mean = np.array([decode_number(s["width"][p][layer]["mean"]) for s in steps])
            high = np.array([decode_number(s["width"][p][layer]["max"]) for s in steps])
            label = point_label(points[p], swept_keys(points)) if p < len(points) else f"point {p}"
            line, = ax.plot(step_ids, np.where(np.isfinite(mean), mean, np.nan), label=label)
            ax.plot(step_ids, np.where(np.isfinite(high), high, np.nan), ls=":", color=line.get_color())
        ax.set_yscale("symlog", linthresh=1e-8)
        ax.set_title(f"parametric layer {layer} (mean solid, max dotted)", fontsize=8)
        ax.set_xlabel("training step")
        ax.grid(alpha=.3)
    axes[0][0].set_ylabel("interval width")
    axes[0][0].legend(fontsize=7)
    return _img(fig, ALT_WIDTH)


def _ensemble_figure(summary: Mapping[str, list]) -> str | None:
    names = [m for m in ("per_sample_certified_accuracy", "multi_sample_certified_accuracy") if summary.get(m)]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for metric, style in zip(names, ({"marker": "o", "ls": "-"}, {"marker": "s", "ls": "--", "mfc": "none"})):
        entries = sorted(summary[metric], key=lambda e: decode_number(e["point"].get("K", "nan")))
        ax.plot([decode_number(e["point"].get("K", "nan")) for e in entries],
                [decode_number(e["value"]) for e in entries], label=metric, **style)
    ax.set_xlabel("K (poisoned training samples)")
    ax.set_ylabel("certified accuracy")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    return _img(fig, ALT_ENSEMBLE)


def _plane_figure(arrays: Mapping[str, np.ndarray], points: list[Mapping[str, Any]]) -> str | None:
    if "plane_certified" not in arrays:
        return None
    xs, ys = arrays["plane_x"], arrays["plane_y"]
    pred, cert = arrays["plane_prediction"], arrays["plane_certified"]
    # up to four points spread over the sweep, from the smallest budget to the largest
    shown = sorted({int(round(i)) for i in np.linspace(0, cert.shape[0] - 1, min(4, cert.shape[0]))})
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(10))[:, :3]
    for ax, p in zip(axes[0], shown):
        image = colours[pred.astype(int) % 10] * np.where(cert[p], 1.0, 0.35)[..., None] + \
            np.where(cert[p], 0.0, 0.55)[..., None]
        ax.imshow(image, origin="lower", extent=(xs.min(), xs.max(), ys.min(), ys.max()), aspect="auto")
        x_test = arrays.get("x_test")
        if x_test is not None and x_test.ndim == 2 and x_test.shape[1] == 2:
            ax.scatter(x_test[:, 0], x_test[:, 1], c=colours[arrays["y_test"].astype(int) % 10], s=4,
                       edgecolors="k", linewidths=.2)
        ax.set_xlim(xs.min(), xs.max())
        ax.set_ylim(ys.min(), ys.max())
        ax.set_title(f"{point_label(points[p], swept_keys(points)) if p < len(points) else p}: "
                     f"{100 * cert[p].mean():.1f}% of plane certified", fontsize=8)
    return _img(fig, ALT_PLANE)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """The whole page as one string."""
    points = report["points"]
    header, rows = metric_table(report["summary"])
    gates = "".join(f'<li class="{"pass" if line.startswith("PASS") else "fail"}">{escape(line)}</li>'
                    for line in gate_lines(report))
    env = report["environment"]
    provenance = [["spec", f"{report['spec']['path']} (sha256 {report['spec']['sha256']})"],
                  ["plan hash", report["plan_hash"]], ["model.onnx sha256", report["model"]["sha256"]],
                  ["data sha256", report["data"]["sha256"]], ["sidecar sha256", report["sidecar"]["sha256"]],
                  ["device / dtype", f"{env['device']} / {env['dtype']}"], ["seed", str(env["seed"])],
                  ["arithmetic", ", ".join(f"{k}: {v}" for k, v in sorted(env["arithmetic"].items()))]]
    provenance += [[f"version {k}", str(v)] for k, v in sorted(env["versions"].items())]
    figures = [_metrics_figure(report["summary"])]
    if report.get("bounds"):
        figures.append(_width_figure(report["bounds"], points))
        figures.append(_plane_figure(arrays, points))
    if report.get("ensemble"):
        figures.append(_ensemble_figure(report["summary"]))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pcert report {escape(report['plan_hash'][:12])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>pcert proof report</h1><p>created {escape(report['created'])}, kind {escape(report['kind'])}</p>",
        "<h2>Summary</h2>", _html_table(header, rows) if rows else "<p>no metrics</p>",
        "<h2>Gates</h2>", f"<ul>{gates}</ul>" if gates else "<p>no gates</p>",
        "<h2>Figures</h2>", *[f for f in figures if f],
        "<h2>Provenance</h2>", _html_table(["item", "value"], provenance),
        "<h2>Spec</h2>", f"<pre>{escape(report['spec']['text'])}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
