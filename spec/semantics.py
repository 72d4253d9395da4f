"""Meaning checks on a typed Spec that need neither the model nor the data.

Each rule reports at the position of the field that breaks it; all rules run, so a user
sees every problem of a file at once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pcert.spec.diagnostics import Reporter, did_you_mean
from pcert.spec.metrics import budget_paths, metrics_for
from pcert.spec.model import BackdoorObjective, BoundedThreat, GeneralThreat, Spec, UnboundedThreat

SUPPORTED_VERSIONS = (1,)
FILE_FIELDS = ("model", "data.path", "data.test_path", "data.images", "data.labels",
               "data.test_images", "data.test_labels", "ensemble.path")
GENERATORS = ("halfmoons", "regression", "digits", "breast_cancer", "diabetes")
CLASSIFICATION_LOSSES = ("cross_entropy", "binary_cross_entropy")


def check_semantics(spec: Spec, rep: Reporter, base_dir: Path | None, fmt: str = "pcert") -> None:
    """Run every rule; ``base_dir`` given means referenced files must exist under it."""
    _Rules(spec, rep, fmt).run()
    if base_dir is not None:
        _check_files(spec, rep, base_dir)


def get_field(spec: Spec, path: str) -> Any:
    """The value at a dotted field path (None where a parent is unset)."""
    value: Any = spec
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def sweep(value: Any) -> list[Any]:
    """A budget as the list of its sweep points."""
    return list(value) if isinstance(value, list) else [value]


class _Rules:
    def __init__(self, spec: Spec, rep: Reporter, fmt: str) -> None:
        self.spec, self.rep, self.fmt = spec, rep, fmt

    def err(self, path: str, message: str, hint: str | None = None) -> None:
        self.rep.error(self.spec.locate(path), message, hint)

    def run(self) -> None:
        self.version()
        self.required()
        if self.spec.train is not None:
            self.train()
        if self.spec.data is not None:
            self.data()
        self.threat()
        self.objective()
        self.ensemble()
        self.gates()

    def version(self) -> None:
        if self.spec.version not in SUPPORTED_VERSIONS:
            self.err("version", f"unknown pcert version {self.spec.version}",
                     "this pcert understands version " + ", ".join(map(str, SUPPORTED_VERSIONS)))

    def required(self) -> None:
        """model, data and train, unless the ensemble comes as precomputed scores."""
        spec = self.spec
        if spec.ensemble is not None and spec.ensemble.kind == "scores":
            return
        missing = [name for name in ("model", "data", "train") if getattr(spec, name) is None]
        if missing:
            noun = "statement" if self.fmt == "pcert" else "key"
            words = ", ".join(f"'{m}'" for m in missing)
            self.rep.error(spec.positions.get(missing[0], (1, 1)),
                           f"missing {noun}{'s' if len(missing) > 1 else ''} {words}",
                           "only specs with 'ensemble scores' may leave out model, data and train")

    def train(self) -> None:
        t = self.spec.train
        assert t is not None
        for name, ok, rule in (("lr", t.lr > 0, "> 0"), ("batch", t.batch >= 1, ">= 1"),
                               ("epochs", t.epochs >= 1, ">= 1"), ("frozen", t.frozen >= 0, ">= 0"),
                               ("lr_decay", t.lr_decay >= 0, ">= 0"),
                               ("momentum", 0 <= t.momentum < 1, "in [0, 1)"),
                               ("clip", t.clip is None or t.clip > 0, "> 0")):
            if not ok:
                self.err(f"train.{name}", f"train.{name} must be {rule}, got {getattr(t, name)}")

    def nonneg(self, path: str, what: str) -> None:
        for i, v in enumerate(sweep(get_field(self.spec, path))):
            if v < 0:
                at = f"{path}.{i}" if isinstance(get_field(self.spec, path), list) else path
                self.err(at, f"{what} must be >= 0, got {v}")

    def threat(self) -> None:
        threat, train = self.spec.threat, self.spec.train
        if isinstance(threat, BoundedThreat):
            for path, what in (("threat.features.n", "n (poisoned points)"),
                               ("threat.labels.m", "m (flipped labels)"),
                               ("threat.features.eps", "eps"), ("threat.labels.nu", "nu")):
                self.nonneg(path, what)
            if train is not None:
                self.fits_batch(threat, train.batch)
                self.label_norm(threat, train.loss)
        elif isinstance(threat, UnboundedThreat):
            self.nonneg("threat.n", "n (poisoned points)")
            n = max(sweep(threat.n))
            if train is not None and n >= train.batch:
                self.err("threat.n", f"n = {n} must be smaller than the batch size {train.batch}",
                         "an unbounded adversary needs at least one clean point per batch")
            if train is not None and train.clip is None:
                self.err("threat", "an unbounded threat needs gradient clipping",
                         "add 'clip: <kappa>' to the train block (bounds exist only with clipping)")
        else:
            assert isinstance(threat, GeneralThreat)
            self.nonneg("threat.K", "K (poisoned partitions)")
            if self.spec.ensemble is None:
                self.err("threat", "a general threat (K poisoned partitions) needs an ensemble",
                         "add e.g. 'ensemble dpa { members: 50 }', or use threat bounded/unbounded")

    def fits_batch(self, threat: BoundedThreat, batch: int) -> None:
        """Each budget, and both together, must fit in one batch."""
        n, m = max(sweep(threat.features.n)), max(sweep(threat.labels.m))
        for path, name, v in (("threat.features.n", "n", n), ("threat.labels.m", "m", m)):
            if v > batch:
                self.err(path, f"{name} = {v} exceeds the batch size {batch}",
                         "a batch cannot hold more poisoned points than it has")
        total = max(n, m) if threat.paired else n + m
        if n <= batch and m <= batch and total > batch:
            self.err("threat.features.n", f"n + m = {total} exceeds the batch size {batch}",
                     "feature and label poison hit different points unless 'paired: true'")

    def label_norm(self, threat: BoundedThreat, loss: str) -> None:
        labels = threat.labels
        if loss in CLASSIFICATION_LOSSES and labels.norm == "inf":
            self.err("threat.labels.norm", f"label norm inf (regression) does not fit loss {loss}",
                     "use norm 0 (label flipping) for classification")
        explicit = "threat.labels.norm" in self.spec.positions or any(sweep(labels.m))
        if loss == "mse" and labels.norm == "0" and explicit:
            self.err("threat.labels.norm", "label norm 0 (label flipping) does not fit loss mse",
                     "use norm inf with a radius nu for regression targets")

    def data(self) -> None:
        d = self.spec.data
        assert d is not None
        if d.source in GENERATORS and d.train is None:
            self.err("data", f"data {d.source} needs 'train' (the number of training samples)")
        if d.source in ("csv", "npz") and d.path is None:
            self.err("data", f"data {d.source} needs 'path'")
        if d.source == "idx" and (d.images is None or d.labels is None):
            self.err("data", "data idx needs 'images' and 'labels'")
        if d.source in GENERATORS and d.path is not None:
            self.err("data.path", f"data {d.source} is generated and takes no path",
                     "use 'data csv { path: ... }' or 'data npz { path: ... }' for files")
        for name in ("train", "test", "features"):
            v = getattr(d, name)
            if v is not None and v < 1:
                self.err(f"data.{name}", f"data.{name} must be >= 1, got {v}")
        if d.noise is not None and d.noise < 0:
            self.err("data.noise", f"data.noise must be >= 0, got {d.noise}")
        if d.trusted is not None and not (0 < d.trusted < 1 or (d.trusted >= 1 and d.trusted == int(d.trusted))):
            self.err("data.trusted", "data.trusted must be a fraction in (0, 1) or a whole count >= 1")

    def objective(self) -> None:
        o = self.spec.objective
        if isinstance(o, BackdoorObjective) and o.eps < 0:
            self.err("objective.eps", f"backdoor eps must be >= 0, got {o.eps}")

    def ensemble(self) -> None:
        e, spec = self.spec.ensemble, self.spec
        if e is None:
            if spec.certify.kind == "multi_sample":
                self.err("certify", "multi_sample certification needs an ensemble",
                         "add e.g. 'ensemble dpa { members: 50 }'")
            if spec.member.kind == "agt":
                self.err("member", "member agt needs an ensemble",
                         "add e.g. 'ensemble dpa { members: 50 }'")
        else:
            if not isinstance(spec.threat, GeneralThreat):
                self.err("threat", f"an ensemble is certified against threat general, not {spec.threat.kind}",
                         "write e.g. 'threat general { K: [1, 5, 10] }'")
            needs = {"dpa": ("members",), "dpa_star": ("members", "seeds"),
                     "fa": ("members", "spread"), "scores": ("path",)}[e.kind]
            for name in needs:
                if getattr(e, name) is None:
                    self.err("ensemble", f"ensemble {e.kind} needs '{name}'")
            for name in ("members", "seeds", "spread"):
                v = getattr(e, name)
                if v is not None and v < 1:
                    self.err(f"ensemble.{name}", f"ensemble.{name} must be >= 1, got {v}")
        if spec.member.kind == "agt":
            if not spec.member.n:
                self.err("member", "member agt needs budgets 'n'", "e.g. 'member agt { n: [1, 2, 4] }'")
            for i, v in enumerate(spec.member.n or []):
                if v < 0:
                    self.err(f"member.n.{i}", f"member.n must be >= 0, got {v}")
        c = spec.certify
        if c.batch is not None and c.batch < 1:
            self.err("certify.batch", f"certify.batch must be >= 1, got {c.batch}")
        if c.solver == "branch_bound" and ((e is not None and e.kind == "fa") or spec.member.kind == "agt"):
            self.err("certify.solver", "solver branch_bound searches sets of poisoned members: it needs DPA or DPA* "
                     "with plain members (one poisoned point flips a member)",
                     "write 'solver: auto' (it picks branch-and-bound wherever it applies)")
        if c.time_limit is not None and not c.time_limit > 0:
            self.err("certify.time_limit", f"certify.time_limit must be > 0, got {c.time_limit}")
        if spec.executor.workers is not None and spec.executor.workers < 1:
            self.err("executor.workers", f"executor.workers must be >= 1, got {spec.executor.workers}")

    def gates(self) -> None:
        produced = metrics_for(self.spec)
        budgets = budget_paths(self.spec.threat)
        for i, gate in enumerate(self.spec.gates):
            if gate.metric not in produced:
                self.err(f"gates.{i}.metric", f"this spec does not produce metric '{gate.metric}'",
                         did_you_mean(gate.metric, produced))
            for name, value in (gate.at or {}).items():
                where = f"gates.{i}.at.{name}"
                if name not in budgets:
                    self.err(where, f"'{name}' is not a budget of threat {self.spec.threat.kind}",
                             did_you_mean(name, budgets))
                    continue
                points = sweep(get_field(self.spec, budgets[name]))
                if not any(math.isclose(value, p, rel_tol=1e-9, abs_tol=1e-12) for p in points):
                    shown = ", ".join(f"{p:g}" for p in points)
                    self.err(where, f"gate at {name} = {value:g} is not a point of the sweep [{shown}]")


def _check_files(spec: Spec, rep: Reporter, base_dir: Path) -> None:
    for path in FILE_FIELDS:
        rel = get_field(spec, path)
        if rel is None:
            continue
        target = base_dir / rel
        if not target.is_file():
            why = "is a folder, not a file" if target.is_dir() else "not found"
            rep.error(spec.locate(path), f"file {rel!r} {why}", f"looked for {target}; "
                      "paths are relative to the spec file")
