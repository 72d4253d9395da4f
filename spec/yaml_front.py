"""The YAML front end: ``yaml.compose`` node graph -> the same positioned AST as ``.pcert``.

Composing (not loading) keeps line/column marks on every node. Plain (unquoted) scalars
are read with the ``.pcert`` literal rules rather than YAML 1.1's (so ``1e-3`` is a number,
``600s`` a duration, ``on``/``no`` plain words), which keeps both syntaxes equivalent.
"""
from __future__ import annotations

import re

import yaml

from pcert.spec.ast import Entry, Map, Node, Pos, Scalar, Seq
from pcert.spec.diagnostics import Reporter
from pcert.spec.grammar import DURATION_UNITS, parse_gate_text

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)")
_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?)([smh])")


def parse_yaml(text: str, rep: Reporter) -> Map | None:
    """Parse a YAML spec into the top-level AST map (None after a YAML syntax error)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        _yaml_error(err, text, rep)
        return None
    if root is None:
        rep.error(Pos(1, 1), "empty spec", "a spec needs at least 'model', 'data', 'train' and 'threat'")
        return None
    if not isinstance(root, yaml.MappingNode):
        rep.error(_pos(root), "a YAML spec must be a mapping of 'key: value' entries at the top level")
        return None
    return _Converter(rep).mapping(root, Pos(1, 1), top=True)


class _Converter:
    def __init__(self, rep: Reporter) -> None:
        self.rep = rep
        self.active: set[int] = set()   # nodes on the current path: aliases may form cycles

    def node(self, node: yaml.Node) -> Node:
        if id(node) in self.active:
            self.rep.error(_pos(node), "recursive YAML alias")
            return Scalar(None, "error", _pos(node))
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, _pos(node))
            if isinstance(node, yaml.SequenceNode):
                return Seq([self.node(n) for n in node.value], _pos(node))
            return _scalar(node)
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, pos: Pos, top: bool = False) -> Map:
        entries = []
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or not str(key.value):
                self.rep.error(_pos(key), "keys must be plain names")
                continue
            if top and key.value == "gates" and isinstance(value, yaml.SequenceNode):
                converted: Node = Seq([self.gate(item) for item in value.value], _pos(value))
            elif isinstance(value, yaml.MappingNode):
                converted = self.mapping(value, _pos(key))
            else:
                converted = self.node(value)
            entries.append(Entry(str(key.value), _pos(key), converted))
        return Map(entries, pos)

    def gate(self, item: yaml.Node) -> Node:
        """A gate item is a mapping or the same one-line string a ``.pcert`` gate uses."""
        if isinstance(item, yaml.ScalarNode) and item.style in ("'", '"', None) and item.value:
            origin = _pos(item)
            if item.style is not None:
                origin = Pos(origin.line, origin.col + 1)
            parsed = parse_gate_text(str(item.value), origin, self.rep)
            return parsed if parsed is not None else Scalar(None, "error", _pos(item))
        return self.node(item)


def _scalar(node: yaml.ScalarNode) -> Scalar:
    pos, text = _pos(node), str(node.value)
    if node.style is not None:
        return Scalar(text, "str", pos)
    if text in ("", "~", "null", "Null", "NULL"):
        return Scalar(None, "null", pos)
    if text in ("true", "false"):
        return Scalar(text == "true", "bool", pos)
    if _INT.fullmatch(text):
        return Scalar(int(text), "int", pos)
    if _FLOAT.fullmatch(text):
        return Scalar(float(text), "float", pos)
    match = _DURATION.fullmatch(text)
    if match:
        return Scalar(float(match.group(1)) * DURATION_UNITS[match.group(3)], "duration", pos)
    return Scalar(text, "ident", pos)


def _pos(node: yaml.Node) -> Pos:
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1)


def _yaml_error(err: yaml.YAMLError, text: str, rep: Reporter) -> None:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        pos = Pos(mark.line + 1, mark.column + 1) if mark is not None else Pos(1, 1)
        message = " ".join(p for p in (err.context, err.problem) if p) or "invalid YAML"
        rep.error(pos, f"YAML: {message}")
        return
    index = getattr(err, "position", 0) or 0
    before = text[:index]
    line = before.count("\n") + 1
    col = index - (before.rfind("\n") + 1) + 1
    reason = getattr(err, "reason", None) or "invalid YAML"
    rep.error(Pos(line, col), f"YAML: {reason}")
