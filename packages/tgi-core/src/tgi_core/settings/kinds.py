"""Value kinds: how one setting's text (a CLI value or an environment variable) becomes a value.

A ``Kind`` parses text, says in words what it accepts (the tail of the error message) and
formats a value back into text that it accepts again (``Settings.to_environ``). Nothing here
knows a setting's name, flag or environment variable; ``fields.py`` pairs kinds with names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BOOL",
    "FLAG",
    "FRACTION",
    "INT_LIST",
    "NON_NEGATIVE_INT",
    "NON_NEGATIVE_NUMBER",
    "PORT",
    "POSITIVE_INT",
    "POSITIVE_NUMBER",
    "TEXT",
    "TEXT_LIST",
    "Kind",
    "choice",
    "number",
]

_TRUE = frozenset({"true", "1", "yes", "y", "on", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "off", "f"})
# Rust's integer parsing: ASCII digits with an optional plus sign (Python's int() would also
# take spaces, underscores and non-ASCII digits).
_INT = re.compile(r"\+?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Kind:
    """How a setting's text is parsed and written back.

    ``parse`` raises ``ValueError`` for text it does not accept; ``expected`` completes the
    sentence "expected ..." in that error. ``takes_value`` is False for CLI switches such as
    ``--json-output`` (present or absent); their environment variables still carry a boolean.
    """

    expected: str
    parse: Callable[[str], object]
    format: Callable[[object], str]
    takes_value: bool = True


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _format_bool(value: object) -> str:
    return "true" if value else "false"


def _integer(text: str, minimum: int, maximum: int) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(text)
    value = int(text)
    if not minimum <= value <= maximum:
        raise ValueError(text)
    return value


def _int_kind(expected: str, minimum: int, maximum: int = _MAX_INT) -> Kind:
    return Kind(expected, lambda text: _integer(text, minimum, maximum), str)


def _parse_float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise ValueError(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def number(expected: str, accept: Callable[[float], bool]) -> Kind:
    """A finite decimal number for which ``accept`` holds (e.g. ``lambda x: 0 < x <= 1``)."""

    def parse(text: str) -> float:
        value = _parse_float(text)
        if not accept(value):
            raise ValueError(text)
        return value

    return Kind(expected, parse, repr)


def choice(*values: str) -> Kind:
    """One of ``values``, compared case-insensitively and stored as spelled here."""
    by_lower = {value.lower(): value for value in values}

    def parse(text: str) -> str:
        try:
            return by_lower[text.strip().lower()]
        except KeyError:
            raise ValueError(text) from None

    return Kind("one of: " + ", ".join(values), parse, str)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def _parse_int_list(text: str) -> tuple[int, ...]:
    return tuple(_integer(part, 0, _MAX_INT) for part in _split(text))


def _parse_text_list(text: str) -> tuple[str, ...]:
    parts = tuple(part for part in _split(text) if part)
    if not parts:
        raise ValueError(text)
    return parts


def _format_list(value: object) -> str:
    items = value if isinstance(value, tuple) else (value,)
    return ",".join(str(item) for item in items)


BOOL = Kind("one of: true, false", _parse_bool, _format_bool)
"""A boolean that takes a value on the CLI (``--sharded true``); also 1/0, yes/no, on/off."""

FLAG = Kind("one of: true, false", _parse_bool, _format_bool, takes_value=False)
"""A CLI switch (``--json-output``); its environment variable holds a boolean."""

TEXT = Kind("a string", str, str)
POSITIVE_INT = _int_kind("a positive integer", 1)
NON_NEGATIVE_INT = _int_kind("a non-negative integer", 0)
PORT = _int_kind("a port number in 0..=65535", 0, 65535)
INT_LIST = Kind("a comma-separated list of non-negative integers", _parse_int_list, _format_list)
TEXT_LIST = Kind("a comma-separated list of non-empty strings", _parse_text_list, _format_list)
FRACTION = number("a number in (0, 1]", lambda x: 0 < x <= 1)
NON_NEGATIVE_NUMBER = number("a non-negative number", lambda x: x >= 0)
POSITIVE_NUMBER = number("a positive number", lambda x: x > 0)
