"""Property: any edit of a valid spec yields a Spec or a positioned SpecError, nothing else."""
from __future__ import annotations

import re

from spec_samples import PAIRS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcert.errors import SpecError
from pcert.spec import parse_spec
from pcert.spec.model import Spec

BASES = [(text, fmt) for pair in PAIRS.values() for text, fmt in zip(pair, ("pcert", "yaml"))]
TOKEN = re.compile(r'"[^"\n]*"|[A-Za-z_][A-Za-z0-9_+]*|[0-9.eE+-]+[smh]?|\s+|.')
PIECES = sorted({t for text, _ in BASES for t in TOKEN.findall(text)} |
                set('{}[]:,"#=<>\n\t -+.0eE9smh&*|!%@`\'\\') |
                {"gate", "true", "-1", "1e999", "[]", "{}", "\x00", "é", "---", "- ", "  ", "~"})

edits = st.lists(st.tuples(st.sampled_from(["delete", "insert", "replace", "delete_token", "swap_token"]),
                           st.floats(0, 1), st.sampled_from(PIECES)), min_size=1, max_size=4)


def mutate(text: str, ops: list[tuple[str, float, str]]) -> str:
    for op, where, piece in ops:
        if op in ("delete_token", "swap_token"):
            tokens = TOKEN.findall(text)
            i = min(int(where * len(tokens)), len(tokens) - 1)
            tokens[i] = "" if op == "delete_token" else piece
            text = "".join(tokens)
            continue
        i = min(int(where * (len(text) + 1)), len(text))
        if op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        else:
            text = text[:i] + piece + text[i + len(piece):]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), ops=edits)
def test_mutated_specs_fail_cleanly(base: tuple[str, str], ops: list[tuple[str, float, str]]) -> None:
    text, fmt = base
    mutated = mutate(text, ops)
    try:
        spec = parse_spec(mutated, "fuzz", fmt, check_files=False)  # type: ignore[arg-type]
    except SpecError as err:
        assert err.diagnostics
        n_lines = max(len(mutated.splitlines()), 1)
        for d in err.diagnostics:
            assert 1 <= d.line <= n_lines + 1 and d.col >= 1, d.render()
            assert d.message and "Traceback" not in d.message
        assert str(err)   # renders
    else:
        assert isinstance(spec, Spec)
