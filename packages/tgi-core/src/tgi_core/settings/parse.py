"""argv and environ -> the values given explicitly, parsed, with clap's rules and messages.

Only what the user set comes out of here (CLI first; the environment for what the CLI left
unset). Defaults, derived values and cross-checks come later (``resolve.py``,
``checks.py``). As clap does: ``--flag value``, ``--flag=value``, ``-p 80``, ``-p80``,
``-p=80``; switches take no value; a flag given twice is an error unless repeatable; an
empty environment variable counts as unset.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Literal

from tgi_core.settings.errors import HelpRequested, SettingsError, shown
from tgi_core.settings.fields import FIELDS
from tgi_core.settings.kinds import TEXT
from tgi_core.settings.spec import Spec

__all__ = ["read_argv", "read_environ", "read_sources"]

_BY_LONG = {spec.long: spec for spec in FIELDS if spec.long is not None}
_BY_SHORT = {spec.short: spec for spec in FIELDS if spec.short is not None}
_HELP: dict[str, Literal["help", "version"]] = {"--help": "help", "--version": "version"}
_SHORT_HELP: dict[str, Literal["help", "version"]] = {"h": "help", "V": "version"}


def read_sources(
    argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[dict[str, object], dict[str, object]]:
    """The values set on the command line, and those set in the environment for the rest
    (CLI wins), apart so that an error can say where a value came from."""
    given = read_argv(argv)
    return given, read_environ(environ, skip=frozenset(given))


def read_argv(argv: Sequence[str]) -> dict[str, object]:
    """Parse the launcher's arguments. Raises ``SettingsError`` or ``HelpRequested``."""
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not one string")
    tokens = list(argv)
    given: dict[str, object] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            if index < len(tokens):
                raise SettingsError(f"unexpected argument {shown(tokens[index])} found")
            break
        for spec, inline in _match(token):
            text = inline
            if spec.kind.takes_value and text is None:
                text = _next_value(tokens, index, spec)
                index += 1
            _store(given, spec, _cli_value(spec, text))
    return given


def read_environ(environ: Mapping[str, str], skip: frozenset[str]) -> dict[str, object]:
    """Parse the environment variables of every setting not in ``skip``."""
    given: dict[str, object] = {}
    for spec in FIELDS:
        if spec.name in skip:
            continue
        for env in spec.env_names:
            text = environ.get(env)
            if text:  # clap ignores empty variables
                given[spec.name] = _parse(spec, text, env)
                break
    return given


def _match(token: str) -> list[tuple[Spec, str | None]]:
    """The settings a token names, each with its inline value (``--a=1``, ``-p80``)."""
    if token.startswith("--"):
        name, equals, inline = token.partition("=")
        if name in _HELP:
            raise HelpRequested(_HELP[name])
        spec = _BY_LONG.get(name)
        if spec is None:
            raise SettingsError(_unexpected(token, name))
        return [(spec, inline if equals else None)]
    if token.startswith("-") and len(token) > 1:
        return _match_shorts(token)
    raise SettingsError(f"unexpected argument {shown(token)} found")


def _match_shorts(token: str) -> list[tuple[Spec, str | None]]:
    """``-e``, ``-p80``, ``-p=80`` and clusters of switches such as ``-eh``."""
    matched: list[tuple[Spec, str | None]] = []
    letters = token[1:]
    for position, letter in enumerate(letters):
        if letter in _SHORT_HELP:
            raise HelpRequested(_SHORT_HELP[letter])
        spec = _BY_SHORT.get(letter)
        if spec is None:
            raise SettingsError(f"unexpected argument {shown('-' + letter)} found")
        rest = letters[position + 1 :]
        if spec.kind.takes_value:
            inline = rest.removeprefix("=") if rest else None
            matched.append((spec, inline))
            return matched
        if rest.startswith("="):
            raise _unexpected_value(spec, rest[1:])
        matched.append((spec, None))
    return matched


def _next_value(tokens: list[str], index: int, spec: Spec) -> str:
    """The token after a flag that takes a value, unless it is missing or another flag."""
    if index >= len(tokens) or _looks_like_flag(tokens[index]):
        raise SettingsError(f"a value is required for '{spec.display}' but none was supplied")
    return tokens[index]


def _cli_value(spec: Spec, inline: str | None) -> object:
    if not spec.kind.takes_value:
        if inline is not None:
            raise _unexpected_value(spec, inline)
        return True
    assert inline is not None  # read_argv supplied the next token
    return _parse(spec, inline, env=None)


def _store(given: dict[str, object], spec: Spec, value: object) -> None:
    if value is None:
        return
    if spec.name in given:
        if not spec.repeatable:
            raise SettingsError(f"the argument '{spec.display}' cannot be used multiple times")
        previous = given[spec.name]
        assert isinstance(previous, tuple) and isinstance(value, tuple)  # repeatable = lists
        value = previous + value
    given[spec.name] = value


def _parse(spec: Spec, text: str, env: str | None) -> object:
    """One value, or ``SettingsError`` naming the flag, the variable and what is accepted.

    An empty text value means unset (``--revision ""`` as an absent ``REVISION``).
    """
    if spec.kind is TEXT and not text:
        return None
    try:
        return spec.kind.parse(text)
    except ValueError:
        pass
    if spec.long is None:
        where = f"environment variable {env or spec.display}"
    elif env is None:
        where = f"'{spec.display}'"
    else:
        where = f"'{spec.display}' (from environment variable {env})"
    raise SettingsError(f"invalid value {shown(text)} for {where}: expected {spec.kind.expected}")


def _unexpected_value(spec: Spec, text: str) -> SettingsError:
    return SettingsError(
        f"unexpected value {shown(text)} for '{spec.display}' found; no more were expected"
    )


def _unexpected(token: str, name: str) -> str:
    message = f"unexpected argument {shown(token)} found"
    similar = difflib.get_close_matches(name, list(_BY_LONG), n=1, cutoff=0.75)
    if similar:
        message += f" (tip: a similar argument exists: '{similar[0]}')"
    return message


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1
