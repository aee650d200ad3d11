"""The vision-language families served, by ``model_type``: the one list the server asks.

A checkpoint whose ``model_type`` names no family here is served as a text model: one the
runner has no text model for either (a VLM of another family) is refused there in one line.
(A VLM whose text half transformers serves as a causal LM, Gemma 3 for one, is served
text-only through the fallback; images are refused.) Its two sides build a family's hooks:
``prompt_encoding.py`` the front end's, ``runner_parts.py`` the runner's. Imports nothing
but the families' descriptions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tgi_vlm.family import VlmFamily
from tgi_vlm.llava_next.family import LLAVA_NEXT
from tgi_vlm.mllama.family import MLLAMA

__all__ = ["FAMILIES", "family_of", "read_family"]

FAMILIES: Mapping[str, VlmFamily] = {f.model_type: f for f in (LLAVA_NEXT, MLLAMA)}


def family_of(config: Mapping[str, Any]) -> VlmFamily | None:
    """The family of a checkpoint's ``config.json``; None for any other model type."""
    model_type = config.get("model_type")
    return FAMILIES.get(model_type) if isinstance(model_type, str) else None


def read_family(folder: Path) -> VlmFamily | None:
    """The family of ``folder/config.json``; None where there is none or it names none."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return family_of(config) if isinstance(config, dict) else None
