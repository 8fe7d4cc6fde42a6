"""The project's own error types.

Every error a user can cause is an ``FtmagicError``. Its message is written for a person: it names
where the problem is, the rule that was broken and how to fix it, so the notebook and the CLI show
it without a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any


class FtmagicError(Exception):
    """Base of all user-facing errors. ``str(err)`` is the complete message."""


class ConfigError(FtmagicError, ValueError):
    """A run configuration field is missing, misspelled or out of range."""

    def __init__(
        self,
        field: str,
        message: str,
        *,
        value: object = None,
        allowed: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.suggestion = suggestion
        parts = [f"config field '{field}': {message}"]
        if value is not None:
            parts.append(f"got {brief(value)}")
        if allowed:
            parts.append(f"allowed: {allowed}")
        if suggestion:
            parts.append(suggestion)
        super().__init__("; ".join(parts))


class DataError(FtmagicError, ValueError):
    """Training or eval data cannot be read or breaks a rule.

    ``source`` is the file (or URL), ``line`` the 1-based line or row, ``field`` the JSON path of
    the offending value (``messages[2].role``), ``rule`` the broken rule and ``fix`` the advice.
    """

    def __init__(
        self,
        rule: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
        value: object = None,
        fix: str | None = None,
    ) -> None:
        self.rule = rule
        self.source = source
        self.line = line
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(self.describe())

    @property
    def location(self) -> str:
        where = self.source or "<data>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f" [{self.field}]"
        return where

    def describe(self) -> str:
        text = f"{self.location}: {self.rule}"
        if self.value is not None:
            text += f" (value: {brief(self.value)})"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "line": self.line,
            "field": self.field,
            "rule": self.rule,
            "value": None if self.value is None else brief(self.value),
            "fix": self.fix,
        }


class ValidationFailed(FtmagicError):
    """Data validation found errors; ``report`` holds all of them."""

    def __init__(self, report: object, message: str) -> None:
        self.report = report
        super().__init__(message)


class ModelError(FtmagicError):
    """A model name cannot be resolved or loaded."""


class RunError(FtmagicError):
    """A run cannot be found, started, resumed or registered."""


def shorten(text: str, limit: int = 80) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def brief(value: object, limit: int = 80) -> str:
    """``shorten(repr(value), limit)``, built from no more than ``limit`` characters of pieces: a
    YAML bomb's few hundred bytes can alias billions of items, so a full ``repr`` never ends."""
    text = ""
    for piece in _repr_pieces(value, limit):
        text += piece
        if len(text) > limit:
            break
    return shorten(text, limit)


def _repr_pieces(value: object, limit: int) -> Iterator[str]:
    """``repr(value)`` in pieces, lazily, for the built-in containers YAML makes."""
    kind = type(value)
    if kind in (list, tuple, set, frozenset, dict):
        items: Any = value.items() if isinstance(value, dict) else value  # type: ignore[attr-defined]
        if kind in (set, frozenset) and not items:
            yield f"{kind.__name__}()"
            return
        opening, closing = _BRACKETS[kind]
        yield opening
        for number, item in enumerate(items):
            yield ", " if number else ""
            if kind is dict:
                yield from _repr_pieces(item[0], limit)
                yield ": "
                item = item[1]
            yield from _repr_pieces(item, limit)
        yield "," if kind is tuple and len(items) == 1 else ""
        yield closing
    elif isinstance(value, int) and value.bit_length() > 256:
        # repr is quadratic in the digits, and refused past 4300 of them
        yield f"<a number of about {int(value.bit_length() * math.log10(2)) + 1:,} digits>"
    elif isinstance(value, (str, bytes, bytearray)):
        yield repr(value[: limit + 1])
    else:
        yield repr(value)


_BRACKETS = {
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
    dict: ("{", "}"),
}
