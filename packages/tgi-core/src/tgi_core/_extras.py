"""tgi-core's ``frontend`` extra: one clear error when its libraries are not installed.

``pip install tgi-core`` (what ``tgi-scheduler`` pulls) brings msgspec alone, enough for the
contract, errors, settings and API types. Validation and tokenization need the extra.
"""

from __future__ import annotations

import importlib.util

__all__ = ["FRONTEND_MODULES", "require_frontend"]

FRONTEND_MODULES = (
    "tokenizers",
    "jinja2",
    "gguf",
    "huggingface_hub",
    "jsonschema",
    "outlines_core",
)
"""The import names of the ``frontend`` extra's distributions."""


def require_frontend(module: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the extra if any of its libraries is missing."""
    missing = [name for name in FRONTEND_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"{module} needs tgi-core's frontend extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'tgi-core[frontend]'",
            name=missing[0],
        )
