"""Error types shared by every stage, each carrying the exit code the CLI returns.

Exit codes: 0 all gates hold, 1 a gate failed, 2 bad spec/usage/input, 3 internal or
resource failure. Anything a user can fix is a ``UserError`` (code 2) with a message that
says what and where; the CLI prints it on one line and never shows a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class PcertError(Exception):
    """Base class: a failure the CLI reports as a message and an exit code."""

    exit_code: int = 3


class UserError(PcertError):
    """Bad spec, bad model, bad data or bad usage: exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Diagnostic:
    """One positioned problem in a source file (1-based line and column)."""

    path: str
    line: int
    col: int
    message: str
    hint: str | None = None
    source_line: str | None = None

    def render(self) -> str:
        head = f"{self.path}:{self.line}:{self.col}: error: {self.message}"
        parts = [head]
        if self.source_line is not None:
            parts.append("    " + self.source_line.rstrip("\n"))
            parts.append("    " + " " * max(self.col - 1, 0) + "^")
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)


@dataclass
class SpecError(UserError):
    """All diagnostics found in one spec file (reported together)."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


class ModelError(UserError):
    """The ONNX model cannot be used: corrupt, unsupported operators, wrong shapes."""


class DataError(UserError):
    """Training or test data cannot be used: missing file, NaN, bad labels, wrong shapes."""


class ResourceError(PcertError):
    """Out of memory, solver crash and other failures that are not the user's input."""

    exit_code = 3
