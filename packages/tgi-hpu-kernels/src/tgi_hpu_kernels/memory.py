"""Sizing the KV block pool from the device's free memory.

- An explicit ``num_kv_blocks`` (constructor argument or ``RunnerSettings.num_kv_blocks``)
  wins.
- Otherwise the pool takes the device's budget (``Device.kv_budget_bytes``) once the weights
  are loaded: ``free x 0.9 x memory_fraction`` on CUDA (TGI_WIGGLE_ROOM 0.9),
  ``free x 0.5 x memory_fraction`` of *available* RAM on the CPU, and TGI-Gaudi's rule on
  HPU: ``(free - total x (1 - memory_fraction)) x 0.9`` (HPU_MEMORY_FRACTION, and 10% left to
  HPU graphs as TGI_GRAPH_RESERVED_MEM).
- On the CPU the pool is also capped at what the limits can ever use: ``max_batch_total_tokens``
  tokens when set, else ``max_batch_size`` sequences of ``max_total_tokens``. On accelerators
  the pool is not capped (as TGI does): spare blocks serve as prefix cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device import Device
from tgi_hpu_kernels.kv_cache import KV_CACHE_DTYPES, KVCache
from tgi_hpu_kernels.models.config import ModelConfig

__all__ = ["allocate_kv_cache", "blocks_for_limits", "plan_num_kv_blocks"]

logger = logging.getLogger(__name__)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def blocks_for_limits(settings: RunnerSettings) -> int:
    """The most blocks the configured limits can occupy at once."""
    per_sequence = _ceil_div(settings.max_total_tokens, settings.block_size)
    if settings.max_batch_total_tokens is not None:
        total = _ceil_div(settings.max_batch_total_tokens, settings.block_size)
        return max(total, per_sequence)
    return settings.max_batch_size * per_sequence


def plan_num_kv_blocks(settings: RunnerSettings, device: Device, bytes_per_block: int) -> int:
    """How many KV blocks to allocate (see the module docstring for the rules).

    Raises:
        ValueError: memory does not hold one sequence of ``max_total_tokens``.
    """
    if settings.num_kv_blocks is not None:
        return settings.num_kv_blocks
    free = device.memory_info().free_bytes
    budget = device.kv_budget_bytes(settings.memory_fraction)
    num_blocks = budget // bytes_per_block
    if device.caps_kv_pool:
        num_blocks = min(num_blocks, blocks_for_limits(settings))
    per_sequence = _ceil_div(settings.max_total_tokens, settings.block_size)
    if num_blocks < per_sequence:
        raise ValueError(
            f"Not enough memory for the KV cache: {num_blocks} blocks of {settings.block_size} "
            f"tokens fit in {budget / 2**30:.2f} GiB, one sequence of max_total_tokens="
            f"{settings.max_total_tokens} needs {per_sequence}. Decrease `--max-total-tokens` "
            "or free memory."
        )
    logger.info(
        "KV cache: %d blocks of %d tokens (%.2f GiB of %.2f GiB free)",
        num_blocks,
        settings.block_size,
        num_blocks * bytes_per_block / 2**30,
        free / 2**30,
    )
    return int(num_blocks)


def allocate_kv_cache(
    settings: RunnerSettings,
    device: Device,
    config: ModelConfig,
    dtype: torch.dtype,
    num_kv_blocks: int | None = None,
    *,
    agree: Callable[[int], int] | None = None,
) -> KVCache:
    """The KV pool for ``config``: ``num_kv_blocks`` blocks, or as many as memory allows.

    ``agree`` turns this process's count into the one every shard uses (their minimum).
    With ``--kv-cache-dtype`` the blocks hold FP8 and a block costs that much less.

    Raises:
        ValueError: an FP8 format the device does not take (e5m2 on Gaudi).
    """
    # config is this rank's share (shard_config): with more shards than KV heads each holds
    # one replicated head, so sharding past the KV heads buys no KV room per card
    num_layers, num_kv_heads = config.num_hidden_layers, config.num_key_value_heads
    if settings.kv_cache_dtype == "fp8_e5m2" and device.name == "hpu":
        raise ValueError("--kv-cache-dtype fp8_e5m2 is not supported on Gaudi: use fp8_e4m3fn")
    storage = KV_CACHE_DTYPES[settings.kv_cache_dtype] if settings.kv_cache_dtype else None
    if num_kv_blocks is None:
        per_block = KVCache.bytes_per_block(
            num_layers=num_layers,
            block_size=settings.block_size,
            num_kv_heads=num_kv_heads,
            head_dim=config.head_dim,
            dtype=storage or dtype,
        )
        num_kv_blocks = plan_num_kv_blocks(settings, device, per_block)
    if agree is not None:
        num_kv_blocks = agree(num_kv_blocks)
    return KVCache(
        num_layers=num_layers,
        num_blocks=num_kv_blocks,
        block_size=settings.block_size,
        num_kv_heads=num_kv_heads,
        head_dim=config.head_dim,
        dtype=dtype,
        device=device.torch_device,
        storage_dtype=storage,
    )
