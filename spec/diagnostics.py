"""Collecting positioned diagnostics with source lines and did-you-mean hints."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from pcert.errors import Diagnostic, SpecError
from pcert.spec.ast import Pos


def did_you_mean(word: object, choices: Iterable[str]) -> str | None:
    """A hint naming the closest valid spelling, or listing the choices when few."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if 0 < len(options) <= 8:
        return "expected one of: " + ", ".join(options)
    return None


class Reporter:
    """Accumulates every problem found in one file, then raises them together."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.diagnostics: list[Diagnostic] = []

    def error(self, pos: Pos | tuple[int, int], message: str, hint: str | None = None) -> None:
        line, col = (pos.line, pos.col) if isinstance(pos, Pos) else pos
        line = max(1, min(line, max(len(self.lines), 1)))
        col = max(1, col)
        source = self.lines[line - 1] if line <= len(self.lines) else ""
        self.diagnostics.append(Diagnostic(self.path, line, col, message, hint, source))

    def raise_if_any(self) -> None:
        if self.diagnostics:
            ordered = sorted(self.diagnostics, key=lambda d: (d.line, d.col))
            raise SpecError(diagnostics=ordered)
