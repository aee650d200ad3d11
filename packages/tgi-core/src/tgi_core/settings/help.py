"""``--help`` text, rendered from the table in clap's long-help layout, grouped by section.

Static: it shows defaults as documented (not as resolved on this machine) and never reads
the environment, so it is the same everywhere.
"""

from __future__ import annotations

import textwrap

from tgi_core.settings.fields import FIELDS
from tgi_core.settings.spec import SECTIONS, Spec

__all__ = ["render_help"]

_INDENT = " " * 10
_ABOUT = (
    "Text Generation Inference for Gaudi: TGI's launcher flags and environment variables. "
    "A flag wins over its environment variable, which wins over the default."
)


def render_help(prog: str = "text-generation-launcher", width: int = 100) -> str:
    """The full ``--help`` text: every flag and environment variable of the table."""
    lines = [*textwrap.wrap(_ABOUT, width), "", f"Usage: {prog} [OPTIONS]", ""]
    for section in SECTIONS:
        lines.append(f"{section}:")
        for spec in FIELDS:
            if spec.section == section:
                lines.extend(_entry(spec, width))
    lines.extend(
        [
            "Other:",
            "  -h, --help",
            f"{_INDENT}Print help",
            "",
            "  -V, --version",
            f"{_INDENT}Print version",
        ]
    )
    return "\n".join(lines) + "\n"


def _entry(spec: Spec, width: int) -> list[str]:
    if spec.long is None:
        head = f"      {spec.display} (environment variable only)"
    elif spec.short is not None:
        head = f"  -{spec.short}, {spec.display}"
    else:
        head = f"      {spec.display}"
    body = textwrap.wrap(spec.help, width, initial_indent=_INDENT, subsequent_indent=_INDENT)
    notes = []
    if spec.env_names and spec.long is not None:
        notes.append(f"[env: {', '.join(spec.env_names)}]")
    elif len(spec.env_names) > 1:
        notes.append(f"[also: {', '.join(spec.env_names[1:])}]")
    if spec.default_text:
        notes.append(f"[default: {spec.default_text}]")
    if spec.kind.expected.startswith("one of: ") and spec.kind.takes_value:
        notes.append(f"[possible values: {spec.kind.expected.removeprefix('one of: ')}]")
    if spec.repeatable:
        notes.append("[repeatable]")
    if spec.status.note:
        notes.append(f"[{spec.status.note}]")
    wrapped_notes = [
        line
        for note in notes
        for line in textwrap.wrap(note, width, initial_indent=_INDENT, subsequent_indent=_INDENT)
    ]
    return [head, *body, *wrapped_notes, ""]
