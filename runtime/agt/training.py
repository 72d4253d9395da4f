"""The AGT loop (Algorithm 1) and the plain SGD run it must reproduce.

One run carries every budget point on a leading axis P; the nominal run (in ``dtype``, with the
same recurrences as autograd) is computed once. Bounds run in float64 with a-priori rounding
terms and outward rounding (the forward pass over feature-poisoned inputs in ``dtype``: its widths
come from eps), and each step is hulled with the nominal parameters, so they contain
every exact-arithmetic and float64 run of every admissible poisoning and the nominal run exactly
(``cover="all"``: every run in ``dtype`` too). Frozen leading layers are evaluated once.
Overflowing bounds become +-inf (never NaN) and the first such step is recorded.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function as phase  # names a step's parts for bench/profile_agt.py

from pcert.compiler.graph import LayerGraph
from pcert.compiler.torch_model import to_torch
from pcert.errors import DataError, UserError
from pcert.runtime.bounds.ibp import param_index
from pcert.runtime.bounds.interval import (covering, input_box, outward, real_radius, round_out, sanitize,
                                           shifted_linear_bounds)
from pcert.runtime.constants import constant
from pcert.runtime.memory import retain_freed_memory

from .backward import Factors, backward_bounds, backward_point, forward_point
from .config import AGTResult, BudgetPoint, TrainConfig
from .descent import Adversary, LayerGrads, descent_sums
from .graphed import GraphedSteps
from .losses import LabelModel, loss_grad, loss_grad_bounds


def batch_order(n: int, cfg: TrainConfig) -> list[tuple[int, np.ndarray]]:
    """(epoch, indices) per step: a seeded permutation per epoch, last partial batch kept."""
    rng = np.random.default_rng(cfg.order_seed)
    steps = []
    for epoch in range(cfg.epochs):
        perm = rng.permutation(n)
        steps += [(epoch, perm[s:s + cfg.batch]) for s in range(0, n, cfg.batch)]
    return steps


def prepare_data(graph: LayerGraph, x, y, loss: str, dtype, device) -> tuple[Tensor, Tensor]:
    """Check shapes, finiteness and labels; return tensors (labels long for cross-entropy)."""
    xt = torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
    if xt.dim() < 1 or tuple(xt.shape[1:]) != tuple(graph.input_shape):
        raise DataError(f"data: inputs have per-sample shape {list(xt.shape[1:])}, the model expects {list(graph.input_shape)}")
    if not torch.isfinite(xt).all():
        raise DataError("data: inputs contain NaN or infinite values")
    ya = np.asarray(y)
    if ya.shape[0] != xt.shape[0]:
        raise DataError(f"data: {xt.shape[0]} inputs but {ya.shape[0]} labels")
    c = int(np.prod(graph.output_shape))
    if loss == "cross_entropy":
        if ya.ndim != 1 or not np.all(np.equal(np.mod(ya, 1), 0)) or ya.min(initial=0) < 0 or ya.max(initial=0) >= c:
            raise DataError(f"data: cross-entropy labels must be class indices in [0, {c})")
        return xt, torch.as_tensor(ya.astype(np.int64), device=device)
    yt = torch.as_tensor(ya, dtype=dtype, device=device)
    if not torch.isfinite(yt).all() or yt.numel() != xt.shape[0] * c:
        raise DataError(f"data: labels must be finite with {c} value(s) per sample")
    if loss == "binary_cross_entropy" and c != 1:
        raise DataError("data: binary cross-entropy needs a model with one output")
    return xt, yt.reshape(xt.shape[0], c)


def _loss_top(graph: LayerGraph, loss: str) -> int:
    """Index of the layer whose output the loss gradient starts from (BCE: before a final sigmoid)."""
    last = len(graph.layers) - 1
    return last - 1 if loss == "binary_cross_entropy" and graph.layers[last].op == "sigmoid" else last


def _initial(graph: LayerGraph, dtype, device) -> list[Tensor]:
    out = []
    for layer in graph.parametric_layers:
        out.append(torch.as_tensor(np.asarray(layer.weight), dtype=dtype, device=device).clone())
        if layer.bias is not None:
            out.append(torch.as_tensor(np.asarray(layer.bias), dtype=dtype, device=device).clone())
    return out


def _torch_loss(loss: str, out: Tensor, y: Tensor) -> Tensor:
    if loss == "cross_entropy":
        return F.cross_entropy(out, y)
    if loss == "mse":
        return F.mse_loss(out, y.reshape(out.shape))
    return F.binary_cross_entropy_with_logits(out, y.reshape(out.shape))


def train_nominal(graph: LayerGraph, x, y, cfg: TrainConfig, *, dtype=torch.float32, device="cpu") -> list[Tensor]:
    """Plain SGD with the same recipe (nn.Module + autograd + torch.optim.SGD's update rule)."""
    cfg.validate(len(graph.parametric_layers))
    xt, yt = prepare_data(graph, x, y, cfg.loss, dtype, device)
    model = to_torch(graph, dtype=dtype).to(device)
    net = model[:-1] if _loss_top(graph, cfg.loss) < len(graph.layers) - 1 else model
    params = list(model.parameters())
    n_frozen = sum(1 for layer in graph.parametric_layers[:cfg.frozen] for t in (layer.weight, layer.bias) if t is not None)
    train = params[n_frozen:]
    bufs: list[Tensor | None] = [None] * len(train)
    for t, (_, idx) in enumerate(batch_order(xt.shape[0], cfg)):
        xb, yb = xt[idx], yt[idx]
        if cfg.clip is None:
            grads = torch.autograd.grad(_torch_loss(cfg.loss, net(xb), yb), train)
        else:
            names = [n for n, _ in model.named_parameters()]
            fixed = dict(zip(names[:n_frozen], (q.detach() for q in params[:n_frozen])))

            def one(ps, xi, yi):
                state = {**fixed, **dict(zip(names[n_frozen:], ps))}
                return _torch_loss(cfg.loss, torch.func.functional_call(net, state, (xi[None],)), yi[None])

            per = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(tuple(p.detach() for p in train), xb, yb)
            if cfg.clip_method == "element":
                per = [g.clamp(-cfg.clip, cfg.clip) for g in per]
            else:
                norm = torch.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in per))
                scale = torch.clamp(cfg.clip / norm, max=1.0)
                per = [g * scale.view(-1, *[1] * (g.dim() - 1)) for g in per]
            grads = [g.mean(0) for g in per]
        lr_t = cfg.lr / (1.0 + cfg.lr_decay * t)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(train, grads)):
                if cfg.momentum and bufs[i] is not None:
                    bufs[i] = bufs[i] * cfg.momentum + g
                else:
                    bufs[i] = g.clone()
                p.add_(bufs[i], alpha=-lr_t)
    return [p.detach().clone() for p in params]


def bound_dtype(dtype: torch.dtype) -> torch.dtype:
    """Bounds are propagated in float64 (tiny a-priori rounding terms) unless the run is wider still."""
    return dtype if torch.finfo(dtype).bits >= 64 else torch.float64


def _label_model(pt: BudgetPoint) -> LabelModel | None:
    if pt.kind != "bounded" or pt.m == 0:
        return None
    label_only = pt.n == 0 or pt.eps == 0
    return LabelModel(pt.label_norm, pt.nu if pt.label_norm == "inf" else 1.0, pt.label_classes,
                      strict=label_only and pt.label_norm == "0")


def _forward_fn(method: str):
    if method == "ibp":
        from pcert.runtime.bounds.ibp import ibp_layers as fn
    else:
        from pcert.runtime.bounds.forward import METHODS, bound_layers
        if method not in METHODS:
            raise UserError(f"bounds: unknown method {method!r}; expected one of {', '.join(METHODS)}")
        return lambda g, lo, hi, xl, xh: bound_layers(g, lo, hi, xl, xh, method)
    return fn


def _moved_forward(fwd_fn, graph: LayerGraph, plo: list[Tensor], phi: list[Tensor], x_in: tuple[Tensor, Tensor],
                   clean: list[tuple[Tensor, Tensor]], moved: list[bool], pdt: torch.dtype,
                   radius: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
    """Forward bounds over the poisoned input box, for the points where it differs from the clean input.

    The pass runs in ``pdt`` (the working dtype): its widths come from eps, far above that dtype's
    rounding margins, and it is the costliest pass of a step. Parameters and inputs are rounded
    outward to it, the results converted back exactly. A point without feature poisoning
    (eps = 0) reuses its clean bounds, exactly what it gets alone. ``radius`` [P]: the box is the
    clean input +- radius and the first layer linear (IBP), whose output is then the clean one
    shifted by radius * sum |W| (``shifted_linear_bounds``) instead of a product with the box.
    """
    every = all(moved)
    idx = constant(tuple(q for q, m in enumerate(moved) if m), torch.int64, plo[0].device)
    pick = (lambda t: t) if every else (lambda t: t.index_select(0, idx))  # noqa: E731
    down = lambda lo, hi: round_out(pick(lo), pick(hi), pdt)  # noqa: E731
    p_lo, p_hi = (list(ps) for ps in zip(*(down(lo, hi) for lo, hi in zip(plo, phi))))
    if radius is None:
        part = fwd_fn(graph, p_lo, p_hi, *down(*x_in))
    else:
        first = shifted_linear_bounds(pick(clean[0][0]), pick(clean[0][1]), pick(plo[0]), pick(phi[0]),
                                      pick(radius))
        part = [first] + fwd_fn(graph, p_lo, p_hi, *round_out(*first, pdt), start=1)
    out = []
    p = len(moved)
    for (c_lo, c_hi), (m_lo, m_hi) in zip(clean, part):
        m_lo, m_hi = m_lo.to(c_lo.dtype), m_hi.to(c_hi.dtype)
        if every:
            out.append((m_lo, m_hi))
            continue
        out.append((c_lo.expand(p, *c_lo.shape[1:]).index_copy(0, idx, m_lo),
                    c_hi.expand(p, *c_hi.shape[1:]).index_copy(0, idx, m_hi)))
    return out


def _poisoned_input(x: Tensor, eps_per_point: list[float]) -> tuple[Tensor, Tensor]:
    """The poisoned input box of every point (l1/l2 balls lie inside it), [P, ...] around x [1, ...]:
    one ``input_box`` per distinct eps > 0, the clean x where eps = 0. A sweep over n or m shares one
    box (a budget axis of stride 0 where every point has the same eps) instead of one per point."""
    distinct = sorted({e for e in eps_per_point if e > 0})
    eps = torch.tensor(distinct, dtype=torch.float64).view(-1, *[1] * (x.dim() - 1))
    lo, hi = input_box(x, eps)
    if len(distinct) == 1 and all(e > 0 for e in eps_per_point):
        return lo.expand(len(eps_per_point), *lo.shape[1:]), hi.expand(len(eps_per_point), *hi.shape[1:])
    pick = lambda box: torch.stack([box[distinct.index(e)] if e > 0 else x[0] for e in eps_per_point])  # noqa: E731
    return pick(lo), pick(hi)


def _width_stats(lo: list[Tensor], hi: list[Tensor], slots) -> list[list[dict]]:
    stats = []
    per_layer = []
    for wi, bi in slots.values():
        ws = [(hi[wi] - lo[wi]).flatten(1)] + ([(hi[bi] - lo[bi]).flatten(1)] if bi is not None else [])
        per_layer.append(torch.cat(ws, 1))
    # one host transfer for all of them: [P, layers, 3]
    table = torch.stack([torch.stack((w.amin(1), w.mean(1), w.amax(1)), 1) for w in per_layer], 1).tolist()
    for rows in table:
        stats.append([{"min": lo_, "mean": mean, "max": hi_} for lo_, mean, hi_ in rows])
    return stats


def train_with_bounds(graph: LayerGraph, x, y, cfg: TrainConfig, points: Sequence[BudgetPoint], *,
                      method: str = "ibp", dtype=torch.float32, device="cpu",
                      trusted: np.ndarray | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      on_step: Callable[[int, list[Tensor], list[Tensor], list[Tensor]], None] | None = None,
                      cover: Literal["nominal", "all"] = "nominal") -> AGTResult:
    """Algorithm 1 for every budget point at once; see the module docstring.

    Bounds run in float64. They contain every exact-arithmetic and float64 run of every admissible
    poisoning, plus the nominal run in ``dtype`` exactly. ``cover="all"`` also makes them contain
    every evaluation in ``dtype`` (e.g. any float32 training run): all a-priori rounding terms then
    use dtype's unit roundoff, which is rigorous but wider (about 1e-4 relative per step at batch
    3000 in float32). ``on_step(t, nominal, lower, upper)`` sees the parameters after every step.
    """
    if cover not in ("nominal", "all"):
        raise UserError(f"arithmetic: cover must be 'nominal' or 'all' (got {cover!r})")
    retain_freed_memory()
    with covering(dtype) if cover == "all" else contextlib.nullcontext():
        return _train(graph, x, y, cfg, tuple(points), method, dtype, device, trusted, progress, on_step, cover)


def _train(graph, x, y, cfg, points, method, dtype, device, trusted, progress, on_step, cover) -> AGTResult:
    if not points:
        raise UserError("budget: at least one budget point is needed")
    par = [i for i, layer in enumerate(graph.layers) if layer.is_parametric]
    cfg.validate(len(par))
    for pt in points:
        pt.validate(cfg)
    fwd_fn = _forward_fn(method)
    xt, yt = prepare_data(graph, x, y, cfg.loss, dtype, device)
    cdt = bound_dtype(dtype)
    xc = xt.to(cdt)
    yc = yt if cfg.loss == "cross_entropy" else yt.to(cdt)
    n = xt.shape[0]
    untrusted_all = None
    if trusted is not None:
        tr = np.asarray(trusted, dtype=bool)
        if tr.shape != (n,):
            raise DataError(f"data: trusted mask has shape {list(tr.shape)}, expected [{n}]")
        untrusted_np = ~tr
        untrusted_all = torch.as_tensor(untrusted_np, device=device)
    slots = param_index(graph)
    start = par[cfg.frozen]
    top = _loss_top(graph, cfg.loss)
    p = len(points)
    nominal = _initial(graph, dtype, device)
    plo = [t.to(cdt).unsqueeze(0).repeat(p, *[1] * t.dim()) for t in nominal]
    phi = [t.clone() for t in plo]
    first_train = slots[start][0]
    sub = LayerGraph(graph.layers[start].in_shape, graph.layers[start:])
    eps_per_point = [pt.eps if pt.kind == "bounded" else 0.0 for pt in points]
    needs_poison = any(pt.kind == "bounded" and pt.budget() > 0 for pt in points)
    moved = [e > 0 for e in eps_per_point]  # points whose poisoned inputs leave the clean ones
    feature_poison = needs_poison and any(moved)
    # the poisoned box around raw inputs entering a linear layer: its IBP output is the clean one shifted
    shift = (real_radius(torch.tensor(eps_per_point, dtype=cdt)).to(device)
             if method == "ibp" and start == 0 and graph.layers[0].op == "linear" else None)
    labels = [_label_model(pt) for pt in points]
    n_classes = 2 if cfg.loss == "binary_cross_entropy" else int(np.prod(graph.output_shape))
    flips = any(lm is not None and lm.norm == "0" for lm in labels)
    if flips and cfg.loss == "binary_cross_entropy" and not bool(((yt == 0) | (yt == 1)).all()):
        raise DataError("data: binary cross-entropy labels must be 0 or 1 when the budget flips labels (m > 0); "
                        "soft labels have no flipped class")
    for pt in points:
        if pt.label_classes is not None and not all(0 <= c_ < n_classes for c_ in pt.label_classes):
            raise UserError(f"budget: label_classes {list(pt.label_classes)} must lie in [0, {n_classes})")
    onehot = cfg.loss == "cross_entropy"  # dL/dz = softmax - one-hot sums to zero over classes

    # Frozen prefix: evaluated once (its parameters never change), nominal and bounds.
    x_nom = xt
    clean_in: tuple[Tensor, Tensor] | None = None
    pois_in: tuple[Tensor, Tensor] | None = None
    if start > 0:
        prefix = LayerGraph(graph.input_shape, graph.layers[:start])
        x_nom = forward_point(prefix, slots, nominal, xt)[-1]
        fixed = [t.to(cdt).unsqueeze(0) for t in nominal]
        clean_in = fwd_fn(prefix, fixed, fixed, xc, xc)[-1]
        if feature_poison:
            fixed_p = [t.expand(p, *t.shape[1:]) for t in fixed]  # [1, ...] -> one per budget point
            pois_in = fwd_fn(prefix, fixed_p, fixed_p, *_poisoned_input(xc.unsqueeze(0), eps_per_point))[-1]

    sub_slots = {k - start: (v[0] - first_train, None if v[1] is None else v[1] - first_train)
                 for k, v in slots.items() if k >= start}
    order = batch_order(n, cfg)
    steps: list[dict] = []
    first_bad: list[int | None] = [None] * p
    vel: list[list[Tensor]] = []  # momentum buffers (lo, hi, nominal per parameter), from the first step on
    budgets = [pt.budget() for pt in points]

    def step(idx: Tensor, idx_np: np.ndarray, lr: Tensor) -> None:
        """One AGT step, updating nominal, plo, phi (and the velocities) in place, so that a
        captured replay (``graphed.GraphedSteps``) reads and writes the same tensors."""
        b = idx.numel()
        yb, ybc = yt[idx], yc[idx]
        with phase("pcert::nominal_step"):  # point arithmetic, the same recurrences as autograd
            xn = x_nom[idx]
            outs = forward_point(sub, sub_slots, nominal[first_train:], xn)
            g_nom = loss_grad(cfg.loss, outs[top - start], yb)
            nfac = backward_point(sub, sub_slots, 0, top - start, outs, xn, nominal[first_train:], g_nom)
        with phase("pcert::clean_bounds"):  # over the parameter box
            if clean_in is None:
                xb = xc[idx].unsqueeze(0)
                cin = (xb, xb)
            else:
                cin = (clean_in[0][:, idx], clean_in[1][:, idx])
            tlo, thi = plo[first_train:], phi[first_train:]
            fwd = fwd_fn(sub, tlo, thi, *cin)
            z_lo, z_hi = fwd[top - start]
            g_clean = loss_grad_bounds(cfg.loss, z_lo, z_hi, ybc)
            cf = backward_bounds(sub, sub_slots, 0, top - start, fwd, cin, tlo, thi, g_clean, onehot)
        pf: dict[int, Factors] | None = None
        with phase("pcert::poisoned_bounds"):
            if needs_poison:
                if feature_poison:
                    pin = (_poisoned_input(cin[0], eps_per_point) if pois_in is None  # cin: the clean batch
                           else (pois_in[0][:, idx], pois_in[1][:, idx]))
                    pfwd = _moved_forward(fwd_fn, sub, tlo, thi, pin, fwd, moved, dtype, shift)
                else:
                    pin, pfwd = cin, fwd
                pz_lo, pz_hi = pfwd[top - start]
                if all(lm is None for lm in labels):
                    g_pois = loss_grad_bounds(cfg.loss, pz_lo, pz_hi, ybc)
                else:
                    gs = [loss_grad_bounds(cfg.loss, pz_lo[q], pz_hi[q], ybc, labels[q]) for q in range(p)]
                    g_pois = (torch.stack([g[0] for g in gs]), torch.stack([g[1] for g in gs]))
                pf = backward_bounds(sub, sub_slots, 0, top - start, pfwd, pin, tlo, thi, g_pois,
                                     onehot and all(lm is None or lm.norm == "0" for lm in labels))
        layer_ids = sorted(cf)
        grads = [LayerGrads(sub.layers[i], cf[i], pf[i] if pf is not None else None, nfac[i],
                            sub_slots[i][1] is not None) for i in layer_ids]
        n_untrusted = b if untrusted_all is None else int(untrusted_np[idx_np].sum())
        adv = Adversary([min(k, n_untrusted) for k in budgets], [pt.kind == "unbounded" for pt in points],
                        cfg.clip, cfg.clip_method, None if untrusted_all is None else untrusted_all[idx], moved)
        with phase("pcert::descent_sums"):
            sums, nom_sums = descent_sums(grads, adv)
        d_lo, d_hi, d_nom = [], [], []
        for i, (s_lo, s_hi), s_n in zip(layer_ids, sums, nom_sums):
            wi, bi = sub_slots[i]
            shapes = [nominal[first_train + wi].shape] + ([nominal[first_train + bi].shape] if bi is not None else [])
            sizes = [math.prod(s) for s in shapes]
            lo_parts, hi_parts = outward(s_lo / b, s_hi / b)
            for part_lo, part_hi, part_n, shape in zip(lo_parts.split(sizes, 1), hi_parts.split(sizes, 1),
                                                        (s_n / b).split(sizes), shapes):
                d_lo.append(part_lo.reshape(p, *shape))
                d_hi.append(part_hi.reshape(p, *shape))
                d_nom.append(part_n.reshape(shape))
        if cfg.momentum:
            if not vel:
                vel.extend([lo_.clone(), hi_.clone(), n_.clone()] for lo_, hi_, n_ in zip(d_lo, d_hi, d_nom))
            else:
                mu = cfg.momentum
                for v, dl, dh, dn in zip(vel, d_lo, d_hi, d_nom):
                    v_lo, v_hi = outward(v[0] * mu, v[1] * mu)
                    v_lo, v_hi = outward(v_lo + dl, v_hi + dh)
                    v[0].copy_(v_lo)
                    v[1].copy_(v_hi)
                    v[2].mul_(mu).add_(dn)
            d_lo, d_hi, d_nom = ([v[r] for v in vel] for r in range(3))
        for j, (dl, dh, dn) in enumerate(zip(d_lo, d_hi, d_nom)):
            k = first_train + j
            step_lo, step_hi = outward(dl * lr, dh * lr)
            nominal[k].sub_(dn * lr.to(nominal[k].dtype))
            lo_k, hi_k = outward(plo[k] - step_hi, phi[k] - step_lo)
            nk = nominal[k].to(cdt)  # hull with the float nominal run: contained exactly, by construction
            lo_k, hi_k = sanitize(torch.minimum(lo_k, nk), torch.maximum(hi_k, nk))  # NaN nominal -> +-inf
            plo[k].copy_(lo_k)
            phi[k].copy_(hi_k)

    # every step's indices uploaded at once (each upload from host memory waits for the device)
    order_dev = torch.as_tensor(np.concatenate([i for _, i in order]), device=device).split([len(i) for _, i in order])
    steps_run = GraphedSteps(step, enabled=torch.device(device).type == "cuda" and untrusted_all is None)
    for t, ((epoch, idx_np), idx) in enumerate(zip(order, order_dev)):
        lr_t = cfg.lr / (1.0 + cfg.lr_decay * t)
        steps_run(idx, idx_np, lr_t)
        bad = torch.zeros(p, dtype=torch.bool, device=device)
        for lo_, hi_ in zip(plo[first_train:], phi[first_train:]):
            bad |= ~(torch.isfinite(lo_).flatten(1).all(1) & torch.isfinite(hi_).flatten(1).all(1))
        for q in torch.nonzero(bad).flatten().tolist():
            if first_bad[q] is None:
                first_bad[q] = t
        steps.append({"step": t, "epoch": epoch, "lr": lr_t, "width": _width_stats(plo, phi, slots)})
        if on_step is not None:
            on_step(t, nominal, plo, phi)
        if progress is not None:
            progress(t + 1, len(order))
    lower, upper = zip(*(round_out(lo, hi, dtype) for lo, hi in zip(plo, phi)))
    return AGTResult(nominal=nominal, lower=list(lower), upper=list(upper), points=points, steps=steps,
                     first_nonfinite_step=first_bad,
                     arithmetic={"dtype": str(dtype).replace("torch.", ""),
                                 "bound_dtype": str(cdt).replace("torch.", ""),
                                 "feature_poisoned_forward_dtype": str(dtype).replace("torch.", ""),
                                 "cover": cover,
                                 "contains": ("every float32 SGD run under the threat" if cover == "all" else
                                              "every exact-arithmetic and float64 SGD run under the threat, and the "
                                              "nominal float32 run exactly (another float32 implementation may round "
                                              "outside by ~1e-8)"),
                                 "rounding": "bounds in bound_dtype, one-ulp outward rounding per element-wise op, "
                                             "final bounds rounded outward to dtype; each step hulled with the nominal run",
                                 "margin": "a-priori 2*gamma_k*(|x_mid|+x_rad)(|W_mid|+W_rad) per product "
                                           "(gamma_k = k u / (1 - k u) in bound_dtype, k = contraction length); "
                                           "large float64 radius products on the CPU run in float32, rounded "
                                           "up by their own float32 gamma_k"})
