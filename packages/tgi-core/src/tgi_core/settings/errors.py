"""The two ways reading the settings can stop: a bad setting, or a request for help/version."""

from __future__ import annotations

from typing import Literal

__all__ = ["HelpRequested", "SettingsError"]

_MAX_SHOWN = 80


class SettingsError(ValueError):
    """A setting is invalid: the message is one line naming the flag and environment variable.

    Raised before anything loads; the launcher prints ``error: <message>`` and exits with
    status 2, as clap does.
    """


class HelpRequested(Exception):  # noqa: N818 (a request, not an error)
    """``-h/--help`` or ``-V/--version`` was given: print ``render_help()`` or the version."""

    def __init__(self, kind: Literal["help", "version"]) -> None:
        super().__init__(kind)
        self.kind: Literal["help", "version"] = kind


def shown(text: str) -> str:
    """``text`` quoted for a one-line message: escaped, and cut when very long."""
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    escaped = text.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"'{escaped}'"
