"""The one AST both front ends (``.pcert`` and YAML) produce.

Keeping a single positioned tree means every later check (types, semantics, did-you-mean)
is written once and reports ``file:line:col`` the same way for both syntaxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Pos:
    """1-based line and column of a token in the source text."""

    line: int
    col: int


@dataclass
class Scalar:
    """A literal. ``kind``: int, float, bool, str (quoted), ident (bare word), duration
    (``value`` already in seconds), null (YAML only) or error (a part that already
    failed to parse and was reported: later checks stay silent about it)."""

    value: object
    kind: str
    pos: Pos


@dataclass
class Seq:
    """A list literal: in a numeric budget field it is a sweep."""

    items: list["Node"]
    pos: Pos


@dataclass
class Entry:
    """One ``key: value`` (or statement/nested block) with the key's own position."""

    key: str
    key_pos: Pos
    value: "Node"


@dataclass
class Map:
    """A block or mapping. ``tag`` is the bare word after a statement keyword
    (``threat bounded {...}``): the value of the model's discriminating field."""

    entries: list[Entry]
    pos: Pos
    tag: Scalar | None = None


Node = Union[Scalar, Seq, Map]
