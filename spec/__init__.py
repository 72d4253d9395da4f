"""The pcert language front end: ``.pcert`` and YAML specs -> a validated ``Spec``.

Pipeline: parse (Lark grammar or ``yaml.compose``) -> one positioned AST -> typed data
checked against ``spec/model.py`` -> ``Spec`` -> meaning checks. Every problem is a
positioned ``Diagnostic``; all problems of a file are raised together as one ``SpecError``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from pcert.errors import UserError
from pcert.spec.diagnostics import Reporter
from pcert.spec.grammar import parse_pcert
from pcert.spec.metrics import budget_names, metrics_for
from pcert.spec.model import Spec
from pcert.spec.semantics import check_semantics
from pcert.spec.validate import ast_to_data
from pcert.spec.yaml_front import parse_yaml

__all__ = ["Spec", "load_spec", "parse_spec", "resolve_path", "metrics_for", "budget_names"]

SUFFIXES = {".pcert": "pcert", ".yaml": "yaml", ".yml": "yaml"}
_NO_FILE = ("<string>", "<spec>")


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; the syntax is chosen by its suffix."""
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown spec suffix {path.suffix!r}; use .pcert, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read spec: {err.strerror if isinstance(err, OSError) else err}") from None
    return parse_spec(text, str(path), fmt)  # type: ignore[arg-type]


def parse_spec(text: str, path: str = "<string>", fmt: Literal["pcert", "yaml"] = "pcert",
               check_files: bool = True) -> Spec:
    """Validate spec text; ``path`` names it in errors and anchors relative file paths."""
    if fmt not in ("pcert", "yaml"):
        raise UserError(f"unknown spec format {fmt!r}; use 'pcert' or 'yaml'")
    rep = Reporter(path, text)
    try:
        root = parse_pcert(text, rep) if fmt == "pcert" else parse_yaml(text, rep)
        rep.raise_if_any()
        assert root is not None
        data, positions = ast_to_data(root, fmt, rep)
    except RecursionError:
        rep.error((1, 1), "the spec nests lists or blocks too deeply")
    rep.raise_if_any()
    spec = _build(data, positions, path, text, rep)
    check_semantics(spec, rep, _base_dir(path) if check_files else None, fmt)
    rep.raise_if_any()
    return spec


def resolve_path(spec: Spec, rel: str | Path) -> Path:
    """A path written in the spec, resolved against the folder of the spec file."""
    return _base_dir(spec.source_path) / rel


def _base_dir(source_path: str) -> Path:
    return Path.cwd() if source_path in _NO_FILE else Path(source_path).parent


def _build(data: dict, positions: dict[str, tuple[int, int]], path: str, text: str,
           rep: Reporter) -> Spec:
    """Construct the Spec; a pydantic failure here (a gap in the walk) is still positioned."""
    try:
        return Spec.model_validate({**data, "source_path": path, "source_text": text,
                                    "positions": positions})
    except ValidationError as err:
        for e in err.errors():
            parts = [str(p) for p in e["loc"]]
            while parts and ".".join(parts) not in positions:
                parts.pop()
            where = ".".join(str(p) for p in e["loc"])
            rep.error(positions.get(".".join(parts), (1, 1)), f"invalid value for {where}")
        rep.raise_if_any()
        raise AssertionError("unreachable") from err
