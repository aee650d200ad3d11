"""The limits the scheduler relies on, checked once when it is built (TGI's router checks).

The scheduler keeps one promise that needs these: an empty engine can always admit the
request at the head of its queue (a prompt of ``max_input_tokens``, or a preempted sequence
of up to ``max_batch_prefill_tokens``), so nothing waits forever.
"""

from __future__ import annotations

import sys

from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.block_allocator import BlockAllocator
from tgi_scheduler.buckets import max_blocks_per_seq

__all__ = ["check_limits", "token_budget"]

_POSITIVE = (
    "max_concurrent_requests",
    "max_batch_size",
    "max_batch_prefill_tokens",
    "max_input_tokens",
    "max_total_tokens",
    "batch_bucket_size",
    "prefill_batch_bucket_size",
    "pad_sequence_to_multiple_of",
    "block_size",
    "max_generation_chunk",
)


def token_budget(settings: SchedulerSettings) -> int:
    """``max_batch_total_tokens``, or no token limit when unset (the KV blocks then bound it)."""
    total = settings.max_batch_total_tokens
    return sys.maxsize if total is None else total


def check_limits(settings: SchedulerSettings, allocator: BlockAllocator) -> None:
    """Raise ``ValueError`` naming the flag when the settings cannot be served as given."""
    for name in _POSITIVE:
        value = getattr(settings, name)
        if value <= 0:
            raise ValueError(f"`{name}` must be > 0. Given: {value}")
    if settings.max_waiting_tokens < 0 or settings.waiting_served_ratio < 0:
        raise ValueError("`max_waiting_tokens` and `waiting_served_ratio` must be >= 0")
    if settings.queue_threshold_ms < 0:
        raise ValueError(f"`queue_threshold_ms` must be >= 0. Given: {settings.queue_threshold_ms}")
    max_input, max_total = settings.max_input_tokens, settings.max_total_tokens
    if max_input >= max_total:
        raise ValueError(
            f"`max_input_tokens`({max_input}) must be < `max_total_tokens`({max_total})"
        )
    if settings.max_batch_prefill_tokens < settings.max_input_tokens:
        raise ValueError(
            "`max_batch_prefill_tokens` must be >= `max_input_tokens`. "
            f"Given: {settings.max_batch_prefill_tokens} and {settings.max_input_tokens}"
        )
    _check_total_tokens(settings)
    if allocator.block_size != settings.block_size:
        raise ValueError(
            f"the KV cache has blocks of {allocator.block_size} tokens, "
            f"the settings say {settings.block_size}"
        )
    if allocator.num_usable_blocks < max_blocks_per_seq(settings):
        raise ValueError(
            f"Not enough memory to handle `max_total_tokens={settings.max_total_tokens}`"
        )


def _check_total_tokens(settings: SchedulerSettings) -> None:
    total = settings.max_batch_total_tokens
    if total is None:
        return
    if settings.max_batch_prefill_tokens > total:
        raise ValueError(
            "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. "
            f"Given: {settings.max_batch_prefill_tokens} and {total}"
        )
    if settings.max_total_tokens > total:
        raise ValueError(
            "`max_total_tokens` must be <= `max_batch_total_tokens`. "
            f"Given: {settings.max_total_tokens} and {total}"
        )
