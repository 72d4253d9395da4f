"""AST -> plain data for ``Spec``, driven by the annotations of ``spec/model.py``.

The walk reads field names, types, literals and defaults from the pydantic models, so the
model stays the single source of truth; doing the walk ourselves (rather than showing
pydantic's errors) gives every problem a position, a message in the language's words and a
did-you-mean hint, and lets one pass collect all of them.
"""
from __future__ import annotations

import math
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from pcert.spec.ast import Entry, Map, Node, Pos, Scalar, Seq
from pcert.spec.diagnostics import Reporter, did_you_mean
from pcert.spec.model import Spec

PROVENANCE = frozenset({"source_path", "source_text", "positions"})
DISCRIMINATORS = {"DataSpec": "source", "TrainSpec": "optimizer"}   # every other block: kind
DURATION_FIELDS = frozenset({"time_limit"})
# top-level spelling -> Spec field, per syntax (everything else is spelled as the field)
TOP_ALIASES = {"pcert": {"pcert": "version", "gate": "gates"}, "yaml": {"pcert": "version"}}

_INVALID: Any = object()


def ast_to_data(root: Map, fmt: str, rep: Reporter) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """Convert the top-level AST map into validated plain data plus field positions."""
    walker = _Walker(rep, fmt)
    aliases = TOP_ALIASES[fmt]
    names = {k: k for k in Spec.model_fields if k not in PROVENANCE and k not in aliases.values()}
    names.update(aliases)
    data = walker.fields(root, Spec, names, "", top=True)
    return (data if data is not _INVALID else {}), walker.positions


def discriminator(cls: type[BaseModel]) -> str | None:
    """The field a block's leading word fills (``data csv`` -> source, ``threat bounded`` -> kind)."""
    name = DISCRIMINATORS.get(cls.__name__, "kind")
    return name if name in cls.model_fields else None


class _Walker:
    def __init__(self, rep: Reporter, fmt: str) -> None:
        self.rep = rep
        self.fmt = fmt
        self.positions: dict[str, tuple[int, int]] = {}

    # -- models --------------------------------------------------------------------------
    def fields(self, node: Map, cls: type[BaseModel], names: dict[str, str], path: str,
               top: bool = False) -> Any:
        """Check one block's entries against ``cls``: unknown, duplicate and missing keys."""
        entries = list(node.entries)
        disc = discriminator(cls)
        if node.tag is not None:
            if disc is None:
                self.rep.error(node.tag.pos, f"'{_label(path)}' takes no kind word here")
            else:
                entries.insert(0, Entry(disc, node.tag.pos, node.tag))
        out: dict[str, Any] = {}
        seen: dict[str, Pos] = {}
        what = ("statement" if self.fmt == "pcert" else "key") if top else "field"
        for entry in entries:
            field = names.get(entry.key)
            if field is None:
                where = "" if top else f" in {_label(path)}"
                self.rep.error(entry.key_pos, f"unknown {what} '{entry.key}'{where}",
                               self._unknown_hint(entry.key, names, top))
                continue
            if field in seen:
                self.rep.error(entry.key_pos, f"duplicate {what} '{entry.key}' "
                               f"(first given at line {seen[field].line})")
                continue
            seen[field] = entry.key_pos
            sub = _join(path, field)
            value = self.value(entry.value, cls.model_fields[field].annotation, sub, entry.key_pos)
            if value is not _INVALID:
                out[field] = value
        self._report_missing(node, cls, names, seen, path, top, disc)
        return out

    def _report_missing(self, node: Map, cls: type[BaseModel], names: dict[str, str],
                        seen: dict[str, Pos], path: str, top: bool, disc: str | None) -> None:
        """One diagnostic for a missing kind word, one listing every other missing field."""
        spelled = {f: k for k, f in names.items()}
        missing = [f for f, info in cls.model_fields.items()
                   if f not in PROVENANCE and f not in seen and info.is_required()]
        if disc in missing:
            kinds = get_args(cls.model_fields[disc].annotation)
            self.rep.error(node.pos, self._missing(disc, disc, path, top, disc),
                           self._missing_hint(disc, disc, path, top, disc, kinds))
            missing.remove(disc)
        if len(missing) == 1:
            word = spelled.get(missing[0], missing[0])
            self.rep.error(node.pos, self._missing(missing[0], word, path, top, disc),
                           self._missing_hint(missing[0], word, path, top, disc))
        elif missing:
            words = ", ".join(f"'{spelled.get(f, f)}'" for f in missing)
            what = ("statements" if self.fmt == "pcert" else "keys") if top else "fields"
            self.rep.error(node.pos, f"missing {what} {words}" + ("" if top else f" in {_label(path)}"))

    def model(self, node: Node, cls: type[BaseModel], path: str, anchor: Pos) -> Any:
        node = self._as_block(node, cls)
        if node is None:
            return _INVALID
        if not isinstance(node, Map):
            return self._type_error(node, path, "a block { ... }" if self.fmt == "pcert" else "a mapping")
        self.positions[path] = (anchor.line, anchor.col)
        names = {k: k for k in cls.model_fields if k not in PROVENANCE}
        return self.fields(node, cls, names, path)

    def union_model(self, node: Node, members: tuple[type[BaseModel], ...], default: Any,
                    path: str, anchor: Pos) -> Any:
        """A discriminated union (threat, objective): pick the member by its kind."""
        kinds = {get_args(m.model_fields["kind"].annotation)[0]: m for m in members}
        node = self._as_block(node, members[0])
        if node is None:
            return _INVALID
        if not isinstance(node, Map):
            return self._type_error(node, path, "a block { ... }" if self.fmt == "pcert" else "a mapping")
        kind_node = node.tag or next((e.value for e in node.entries if e.key == "kind"), None)
        if kind_node is None:
            if isinstance(default, BaseModel):
                return self.model(Map(node.entries, node.pos, Scalar(default.kind, "ident", node.pos)),
                                  type(default), path, anchor)
            self.rep.error(node.pos, f"missing the kind of {_label(path)}",
                           self._missing_hint("kind", "kind", path, False, "kind", kinds))
            return _INVALID
        if not isinstance(kind_node, Scalar) or str(kind_node.value) not in kinds:
            if not (isinstance(kind_node, Scalar) and kind_node.kind == "error"):
                self.rep.error(kind_node.pos, f"unknown {_label(path)} kind {_show(kind_node)}",
                               did_you_mean(_raw(kind_node), kinds))
            return _INVALID
        return self.model(node, kinds[str(kind_node.value)], path, anchor)

    def _as_block(self, node: Node, cls: type[BaseModel]) -> Node | None:
        """``member agt`` / YAML ``member: agt``: a bare word is a block with only its kind."""
        if isinstance(node, Scalar):
            if node.kind == "error":
                return None
            if node.kind in ("ident", "str") and discriminator(cls) is not None:
                return Map([], node.pos, tag=node)
        return node

    # -- values --------------------------------------------------------------------------
    def value(self, node: Node, ann: Any, path: str, anchor: Pos) -> Any:
        if isinstance(node, Scalar) and node.kind == "error":
            return _INVALID
        origin = get_origin(ann)
        if origin in (Union, types.UnionType):
            return self.union(node, get_args(ann), path, anchor)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return self.model(node, ann, path, anchor)
        if isinstance(node, Map):
            if origin is dict:
                return self.mapping(node, get_args(ann)[1], path, anchor)
            return self._type_error(node, path, _expected(ann))
        self.positions[path] = (node.pos.line, node.pos.col)
        if origin is list:
            items = node.items if isinstance(node, Seq) else [node]
            out = [self.value(item, get_args(ann)[0], _join(path, str(i)), item.pos)
                   for i, item in enumerate(items)]
            return _INVALID if any(v is _INVALID for v in out) else out
        if isinstance(node, Seq):
            return self._type_error(node, path, _expected(ann))
        return self.scalar(node, ann, path)

    def union(self, node: Node, args: tuple[Any, ...], path: str, anchor: Pos) -> Any:
        if type(None) in args:
            if isinstance(node, Scalar) and node.kind == "null":
                self.positions[path] = (node.pos.line, node.pos.col)
                return None
            rest = tuple(a for a in args if a is not type(None))
            return self.value(node, rest[0] if len(rest) == 1 else Union[rest], path, anchor)
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in args):
            field = _field_of(path)
            default = field.get_default(call_default_factory=True) if field is not None else None
            return self.union_model(node, args, default, path, anchor)
        # a sweep: scalar | list[scalar]
        scalar = next(a for a in args if get_origin(a) is not list)
        if isinstance(node, Seq):
            if not node.items:
                self.rep.error(node.pos, f"{_label(path)}: a sweep needs at least one value")
                return _INVALID
            self.positions[path] = (node.pos.line, node.pos.col)
            out = [self.value(item, scalar, _join(path, str(i)), item.pos)
                   for i, item in enumerate(node.items)]
            return _INVALID if any(v is _INVALID for v in out) else out
        return self.value(node, scalar, path, anchor)

    def mapping(self, node: Map, value_ann: Any, path: str, anchor: Pos) -> Any:
        self.positions[path] = (anchor.line, anchor.col)
        out: dict[str, Any] = {}
        for entry in node.entries:
            if entry.key in out:
                self.rep.error(entry.key_pos, f"duplicate name '{entry.key}' in {_label(path)}")
                continue
            value = self.value(entry.value, value_ann, _join(path, entry.key), entry.key_pos)
            out[entry.key] = value
        return _INVALID if any(v is _INVALID for v in out.values()) else out

    def scalar(self, node: Scalar, ann: Any, path: str) -> Any:
        kind, value = node.kind, node.value
        if get_origin(ann) is Literal:
            choices = [str(c) for c in get_args(ann)]
            if kind in ("ident", "str", "int") and str(value) in choices:
                return str(value)
            self.rep.error(node.pos, f"invalid value {_show(node)} for {_label(path)}",
                           did_you_mean(_raw(node), choices))
            return _INVALID
        if ann is bool and kind == "bool":
            return value
        if ann is int and kind == "int":
            return value
        if ann is float and kind in ("int", "float") or (
                ann is float and kind == "duration" and _leaf(path) in DURATION_FIELDS):
            number = float(value)  # type: ignore[arg-type]
            if not math.isfinite(number):
                self.rep.error(node.pos, f"{_label(path)}: number out of range")
                return _INVALID
            return number
        if ann is str and kind in ("str", "ident"):
            return value
        if kind == "duration" and ann is float:
            self.rep.error(node.pos, f"{_label(path)} takes a plain number, not a duration")
            return _INVALID
        return self._type_error(node, path, _expected(ann))

    # -- messages ------------------------------------------------------------------------
    def _type_error(self, node: Node, path: str, expected: str) -> Any:
        self.rep.error(node.pos, f"{_label(path)} must be {expected}, got {_describe(node)}")
        return _INVALID

    def _unknown_hint(self, key: str, names: dict[str, str], top: bool) -> str | None:
        hint = did_you_mean(key, names)
        if top and self.fmt == "yaml" and key == "version":
            hint = "the version is written 'pcert: 1'"
        return hint

    def _missing(self, field: str, spelled: str, path: str, top: bool, disc: str | None) -> str:
        if top:
            return (f"missing '{spelled}' statement" if self.fmt == "pcert"
                    else f"missing key '{spelled}'")
        if field == disc and self.fmt == "pcert":
            return f"missing the {field} of {_label(path)}"
        return f"missing field '{spelled}' in {_label(path)}"

    def _missing_hint(self, field: str, spelled: str, path: str, top: bool, disc: str | None,
                      kinds: Any = None) -> str | None:
        if field == disc:
            options = sorted(kinds) if kinds is not None else None
            choices = ", ".join(options) if options else None
            if self.fmt == "pcert" and path:
                example = f"{path} {options[0]} {{ ... }}" if options else f"{path} <{field}> {{ ... }}"
                return f"write the {field} after the keyword, e.g. '{example}'" + (
                    f"; one of: {choices}" if choices else "")
            return f"add '{field}: ...'" + (f" (one of: {choices})" if choices else "")
        if top and self.fmt == "pcert":
            return f"add a '{spelled} ...' line"
        return f"add '{spelled}: ...'"


def _field_of(path: str) -> Any:
    """The pydantic FieldInfo of a top-level or nested field path (for union defaults)."""
    cls: Any = Spec
    info = None
    for part in path.split("."):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        info = cls.model_fields[part]
        cls = info.annotation
    return info


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _label(path: str) -> str:
    """A field path as the user spells it (the version field is written ``pcert``)."""
    return "pcert" if path == "version" else (path or "spec")


def _raw(node: Node) -> str:
    return str(node.value) if isinstance(node, Scalar) else ""


def _show(node: Node) -> str:
    return repr(str(node.value)) if isinstance(node, Scalar) else _describe(node)


def _describe(node: Node) -> str:
    if isinstance(node, Seq):
        return "a list"
    if isinstance(node, Map):
        return "a block"
    return {"null": "nothing", "bool": f"{str(node.value).lower()}", "str": f"the string {node.value!r}",
            "duration": "a duration", "ident": f"'{node.value}'"}.get(node.kind, repr(node.value))


def _expected(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is list:
        return "a list of " + _expected(get_args(ann)[0]).replace("a ", "", 1).replace("an ", "", 1) + "s"
    if origin is dict:
        return "a block of 'name: value' entries"
    if origin is Literal:
        return "one of " + ", ".join(str(c) for c in get_args(ann))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(ann, "a value")
