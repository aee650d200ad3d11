"""Cross-checks between settings, with TGI's launcher/router texts where TGI has one.

Each message is TGI's text followed by the flags (and so the environment variables) that
set the values, so a user can tell what to change. Single-value checks (a positive integer,
a choice) are the kinds' business (``kinds.py``); defaults are ``resolve.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tgi_core.settings.errors import SettingsError
from tgi_core.settings.fields import FIELDS
from tgi_core.settings.lora import parse_lora_adapter

if TYPE_CHECKING:
    from tgi_core.settings.model import Settings

__all__ = ["SERVED_QUANTIZE", "UNSERVED_QUANTIZE", "check", "check_refused", "find_num_shards"]

# --quantize values with kernels here, and those whose layouts this server cannot read.
SERVED_QUANTIZE = (
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "eetq",
    "fp8",
    "gptq",
    "awq",
)
UNSERVED_QUANTIZE = ("compressed-tensors", "exl2", "marlin")

_DISPLAY = {spec.name: spec.display for spec in FIELDS}
DEVICE_LIST_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "HABANA_VISIBLE_DEVICES",
)


def _error(text: str, *names: str) -> SettingsError:
    flags = " and ".join(_DISPLAY[name] for name in names)
    return SettingsError(f"{text} (see {flags})" if names else text)


def find_num_shards(sharded: bool | None, num_shard: int | None, num_devices: int | None) -> int:
    """TGI's ``find_num_shards``; ``num_devices`` is the count of visible devices, if known.

    Unlike TGI, ``--sharded false`` with ``--num-shard`` above 1 is an error rather than a
    silent multi-shard start, since TGI's own help says false "deactivates num_shard".
    """
    if sharded is True and num_shard is None:
        if num_devices is None:
            names = "/".join(DEVICE_LIST_VARIABLES)
            raise _error(f"--num-shard and {names} are not set", "sharded", "num_shard")
        if num_devices <= 1:
            raise _error(f"`sharded` is true but only found {num_devices} CUDA devices", "sharded")
        return num_devices
    if sharded is True and num_shard is not None and num_shard <= 1:
        raise _error("`sharded` is true but `num_shard` <= 1", "sharded", "num_shard")
    if sharded is False and num_shard is not None and num_shard > 1:
        raise _error(f"`sharded` is false but `num_shard` is {num_shard}", "sharded", "num_shard")
    if sharded is False and num_shard is None:
        return 1
    resolved = num_shard if num_shard is not None else (num_devices or 1)
    if resolved < 1:
        raise _error("`num_shard` cannot be < 1", "num_shard")
    return resolved


def check(settings: Settings) -> None:
    """Raise ``SettingsError`` for the first inconsistency, in TGI's order."""
    _check_token_limits(settings)
    if settings.validation_workers == 0:
        raise _error("`validation_workers` must be > 0", "validation_workers")
    if settings.num_shard > 1 and settings.quantize == "exl2":
        raise _error("Sharding is currently not supported with `exl2` quantization", "quantize")
    if settings.num_shard % settings.nnodes:
        raise _error(
            f"--num-shard {settings.num_shard} cannot be split evenly over --nnodes "
            f"{settings.nnodes}",
            "num_shard",
            "nnodes",
        )
    if settings.node_rank >= settings.nnodes:
        raise _error(
            f"--node-rank {settings.node_rank} must be < --nnodes {settings.nnodes}",
            "node_rank",
            "nnodes",
        )
    if settings.quantize in UNSERVED_QUANTIZE:
        raise _error(
            f"`{settings.quantize}` checkpoints are not supported by this server "
            f"(it serves {', '.join(SERVED_QUANTIZE)})",
            "quantize",
        )
    if settings.gguf_weights == "quantized" and settings.quantize is not None:
        raise _error(
            f"--gguf-weights quantized keeps a GGUF's own codes; --quantize "
            f"{settings.quantize} chooses others: pass one of them",
            "gguf_weights",
            "quantize",
        )
    if settings.ngrok and settings.ngrok_authtoken is None:
        raise _error("`ngrok-authtoken` must be set when using ngrok tunneling", "ngrok")
    if settings.ngrok and settings.ngrok_edge is None:
        raise _error("`ngrok-edge` must be set when using ngrok tunneling", "ngrok")
    for adapter in settings.lora_adapters:
        if parse_lora_adapter(adapter) is None:
            raise _error(f"Invalid LoRA adapter format: {adapter}", "lora_adapters")


def check_refused(
    from_cli: Mapping[str, object], from_env: Mapping[str, object], environ: Mapping[str, str]
) -> None:
    """Raise ``SettingsError`` for the first refused setting (``Spec.status``) given a value
    other than its default, naming the flag or variable that set it."""
    for spec in FIELDS:
        if spec.status.kind != "refused":
            continue
        if spec.name in from_cli and from_cli[spec.name] != spec.default:
            where = f"the argument '{spec.display}'"
        elif spec.name in from_env and from_env[spec.name] != spec.default:
            env = next(name for name in spec.env_names if environ.get(name))
            where = f"the environment variable {env}"
            if spec.long is not None:
                where = f"the argument '{spec.display}' (from environment variable {env})"
        else:
            continue
        raise SettingsError(f"{where} is refused: {spec.status.reason}")


def _check_token_limits(settings: Settings) -> None:
    max_input = settings.max_input_tokens
    max_total = settings.max_total_tokens
    max_prefill = settings.max_batch_prefill_tokens
    if max_input >= max_total:
        raise _error(
            f"`max_input_tokens`({max_input}) must be < `max_total_tokens`({max_total})",
            "max_input_tokens",
            "max_total_tokens",
        )
    if max_input > max_prefill:
        raise _error(
            "`max_batch_prefill_tokens` must be >= `max_input_tokens`. "
            f"Given: {max_prefill} and {max_input}",
            "max_batch_prefill_tokens",
            "max_input_tokens",
        )
    max_batch_total = settings.max_batch_total_tokens
    if max_batch_total is None:
        return
    if max_prefill > max_batch_total:
        raise _error(
            "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. "
            f"Given: {max_prefill} and {max_batch_total}",
            "max_batch_prefill_tokens",
            "max_batch_total_tokens",
        )
    if max_total > max_batch_total:
        raise _error(
            "`max_total_tokens` must be <= `max_batch_total_tokens`. "
            f"Given: {max_total} and {max_batch_total}",
            "max_total_tokens",
            "max_batch_total_tokens",
        )
