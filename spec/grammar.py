"""The ``.pcert`` front end: Lark (LALR) parse tree -> positioned AST.

Syntax errors become one positioned diagnostic with an "expected ..." list written in the
language's own words (never Lark's terminal names).
"""
from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from pcert.spec.ast import Entry, Map, Node, Pos, Scalar, Seq
from pcert.spec.diagnostics import Reporter

DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SYNTAX_ERRORS = 20
_STATEMENT_START = re.compile(r"[A-Za-z_]")

_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "INT": "a number",
    "FLOAT": "a number",
    "DURATION": "a duration",
    "TRUE": "true",
    "FALSE": "false",
    "OP": "a comparison (>=, >, <=, <, ==)",
    "GATE": "'gate'",
    "AT": "'at'",
    "_NL": "a new line",
    "$END": "end of file",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COLON": "':'",
    "COMMA": "','",
    "EQUAL": "'='",
}


@cache
def _parser() -> Lark:
    grammar = files("pcert.spec").joinpath("pcert.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", start=["start", "gate_expr"])


def parse_pcert(text: str, rep: Reporter) -> Map | None:
    """Parse a whole ``.pcert`` file into the top-level AST map (None after a syntax error)."""
    try:
        tree = _parser().parse(text + "\n", start="start")
    except UnexpectedInput as err:
        _report_syntax_errors(err, text, rep)
        return None
    entries: list[Entry] = []
    gates: list[Node] = []
    gate_pos: Pos | None = None
    for stmt in tree.children:
        if stmt.data == "gate_stmt":
            keyword, expr = stmt.children
            gate_pos = gate_pos or _pos(keyword)
            gates.append(_gate(expr, _pos(keyword), (1, 1)))
            continue
        name, *rest = stmt.children
        value = next((_value(c) for c in rest if c.data != "block"), None)
        block = next((c for c in rest if c.data == "block"), None)
        node: Node
        if block is not None:
            node = Map(_block(block), _pos(name), tag=value if isinstance(value, Scalar) else None)
            if value is not None and not isinstance(value, Scalar):
                rep.error(value.pos, f"'{name}' takes a single word before its block, not a list")
        else:
            node = value if value is not None else Map([], _pos(name))
        entries.append(Entry(str(name), _pos(name), node))
    if gates:
        assert gate_pos is not None
        entries.append(Entry("gate", gate_pos, Seq(gates, gate_pos)))
    return Map(entries, Pos(1, 1))


def _report_syntax_errors(err: UnexpectedInput, text: str, rep: Reporter) -> None:
    """Report ``err``, then resume at the next line that starts a statement in column 1
    (earlier lines blanked, so positions stay put) to find the file's other syntax errors."""
    lines = text.split("\n")
    current: UnexpectedInput | None = err
    while current is not None and len(rep.diagnostics) < MAX_SYNTAX_ERRORS:
        _syntax_error(current, text, (1, 1), rep, "end of file")
        at_end = getattr(getattr(current, "token", None), "type", None) == "$END"
        line = getattr(current, "line", None)
        if at_end or isinstance(current, UnexpectedEOF) or not isinstance(line, int) or line < 1:
            return
        resume = next((i for i in range(line, len(lines)) if _STATEMENT_START.match(lines[i])), None)
        if resume is None:
            return
        text = "\n" * resume + "\n".join(lines[resume:])
        try:
            _parser().parse(text + "\n", start="start")
            current = None
        except UnexpectedInput as again:
            current = again


def parse_gate_text(text: str, origin: Pos, rep: Reporter) -> Map | None:
    """Parse a gate written as one string (YAML ``gates:`` items) positioned at ``origin``."""
    offset = (origin.line, origin.col)
    try:
        tree = _parser().parse(text, start="gate_expr")
    except UnexpectedInput as err:
        _syntax_error(err, text, offset, rep, "end of the gate")
        return None
    return _gate(tree, origin, offset)


def _gate(expr: Tree, pos: Pos, offset: tuple[int, int]) -> Map:
    metric, op, value, *rest = expr.children
    entries = [
        Entry("metric", _pos(metric, offset), Scalar(str(metric), "ident", _pos(metric, offset))),
        Entry("op", _pos(op, offset), Scalar(str(op), "str", _pos(op, offset))),
        Entry("value", _pos(value.children[0], offset), _value(value, offset)),
    ]
    if rest:
        at_kw, *assigns = rest
        at = [Entry(str(a.children[0]), _pos(a.children[0], offset), _value(a.children[1], offset))
              for a in assigns]
        entries.append(Entry("at", _pos(at_kw, offset), Map(at, _pos(at_kw, offset))))
    return Map(entries, pos)


def _block(block: Tree) -> list[Entry]:
    out = []
    for entry in block.children:
        name, body = entry.children
        node = Map(_block(body), _pos(name)) if entry.data == "nested" else _value(body)
        out.append(Entry(str(name), _pos(name), node))
    return out


def _value(tree: Tree, offset: tuple[int, int] = (1, 1)) -> Node:
    kind = tree.data
    if kind == "list":
        bracket, *items = tree.children
        return Seq([_value(c, offset) for c in items], _pos(bracket, offset))
    tok: Token = tree.children[0]
    pos = _pos(tok, offset)
    text = str(tok)
    if kind == "int":
        return Scalar(int(text), "int", pos)
    if kind == "float":
        return Scalar(float(text), "float", pos)
    if kind == "duration":
        return Scalar(float(text[:-1]) * DURATION_UNITS[text[-1]], "duration", pos)
    if kind in ("true", "false"):
        return Scalar(kind == "true", "bool", pos)
    if kind == "string":
        return Scalar(_unescape(text[1:-1]), "str", pos)
    return Scalar(text, "ident", pos)


def _unescape(body: str) -> str:
    table = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: table.get(m.group(1), m.group(0)), body)


def _pos(tok: Token, offset: tuple[int, int] = (1, 1)) -> Pos:
    return _shift(tok.line or 1, tok.column or 1, offset)


def _shift(line: int, col: int, offset: tuple[int, int]) -> Pos:
    """Map a position inside an embedded snippet (1-based) onto the enclosing file."""
    if line == 1:
        return Pos(offset[0], offset[1] + col - 1)
    return Pos(offset[0] + line - 1, col)


def _syntax_error(err: UnexpectedInput, text: str, offset: tuple[int, int], rep: Reporter,
                  end: str) -> None:
    expected = _expected_words(err)
    if isinstance(err, UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        what = "unterminated string" if char == '"' else f"unexpected character {char!r}"
        pos = _shift(err.line, err.column, offset)
    elif isinstance(err, UnexpectedToken) and err.token.type != "$END":
        what = f"unexpected {_describe(err.token)}"
        pos = _shift(err.line, err.column, offset)
    else:  # end of input (UnexpectedEOF or an LALR $END token)
        what = f"unexpected {end}"
        pos = _end_pos(text, offset)
    if what == "unterminated string":
        rep.error(pos, what, "a string ends with '\"' on the same line")
        return
    rep.error(pos, what + (f"; expected {expected}" if expected else ""), _syntax_hint(err))


def _expected_words(err: UnexpectedInput) -> str:
    if isinstance(err, UnexpectedCharacters):
        names = err.allowed or set()
    elif isinstance(err, UnexpectedToken):
        names = err.accepts or err.expected or set()
    elif isinstance(err, UnexpectedEOF):
        names = err.expected or set()
    else:
        names = set()
    words = sorted({_TERMINAL_WORDS.get(n, n.lower()) for n in names if not n.startswith("__")})
    if not words:
        return ""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    kinds = {"NAME": "name", "STRING": "string", "INT": "number", "FLOAT": "number",
             "DURATION": "duration"}
    return f"{kinds[tok.type]} {str(tok)!r}" if tok.type in kinds else repr(str(tok))


def _syntax_hint(err: UnexpectedInput) -> str | None:
    names = (getattr(err, "accepts", None) or getattr(err, "expected", None)
             or getattr(err, "allowed", None) or set())
    if "COLON" in names:
        return "block entries are written 'key: value' (or 'key { ... }' for a nested block)"
    if "RBRACE" in names or "COMMA" in names:
        return "separate entries with ',' or a new line; close blocks with '}'"
    if "_NL" in names:
        return "one statement per line: 'keyword value' or 'keyword kind { key: value, ... }'"
    return None


def _end_pos(text: str, offset: tuple[int, int]) -> Pos:
    lines = text.rstrip("\n").split("\n") or [""]
    return _shift(len(lines), len(lines[-1]) + 1, offset)
