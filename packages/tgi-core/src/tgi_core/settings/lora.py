"""``--lora-adapters`` entries, as TGI's launcher reads them: ``id``, ``id=path`` or
``id@revision`` (a hub repository at a revision)."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LoraAdapter", "parse_lora_adapter"]

_ENTRY = re.compile(r"^([^=@]+)(?:=([^@]+))?(?:@([^@]+))?$")


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """One adapter: the id requests name it by, and where its files are."""

    id: str
    path: str | None = None  # a local folder; None: the hub repository ``id``
    revision: str | None = None


def parse_lora_adapter(entry: str) -> LoraAdapter | None:
    """``entry`` parsed, or None when it is not of TGI's form."""
    match = _ENTRY.match(entry.strip())
    if match is None:
        return None
    adapter_id, path, revision = match.groups()
    return LoraAdapter(adapter_id.strip(), path and path.strip(), revision)
