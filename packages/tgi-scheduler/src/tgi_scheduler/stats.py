"""What the scheduler reports: a snapshot for gauges and running totals for counters.

``SchedulerStats`` is a frozen ``msgspec.Struct`` so that it crosses the engine-process
boundary as it is; a Prometheus exporter maps its fields onto TGI's metrics
(``tgi_queue_size``, ``tgi_batch_current_size``, ``tgi_batch_current_max_tokens``,
``tgi_batch_max_total_tokens``, ``tgi_batch_inference_count{method}``,
``tgi_batch_concat{reason}``) plus the Gaudi-side ones TGI lacks (KV blocks, prefix-cache
hits, preemptions, shapes run without warmup). Counters only grow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from tgi_scheduler.block_allocator import BlockAllocator
    from tgi_scheduler.kv_budget import KVBudget

__all__ = ["SchedulerStats", "StepCounters", "snapshot"]


class StepCounters:
    """Running totals, incremented by the scheduler and the engine (plain ints: hot path)."""

    __slots__ = (
        "num_concat_backpressure",
        "num_concat_wait_exceeded",
        "num_decode_steps",
        "num_failed_steps",
        "num_preemptions",
        "num_prefill_steps",
        "num_requests_refused",
        "num_unwarmed_shapes",
        "prefix_cache_hit_tokens",
        "prefix_cache_query_tokens",
    )

    def __init__(self) -> None:
        self.num_prefill_steps = 0
        self.num_decode_steps = 0
        self.num_concat_backpressure = 0
        self.num_concat_wait_exceeded = 0
        self.num_preemptions = 0
        self.num_requests_refused = 0
        self.num_failed_steps = 0
        self.num_unwarmed_shapes = 0
        self.prefix_cache_hit_tokens = 0
        self.prefix_cache_query_tokens = 0


class SchedulerStats(msgspec.Struct, frozen=True):
    """A snapshot of the scheduler's state and counters.

    Gauges: ``queue_size`` (waiting, preempted and preparing), ``batch_size`` (running sequences),
    ``batch_current_max_tokens`` (tokens reserved by the running batch: each sequence's
    length plus its current generation chunk, TGI's ``max_tokens``; a cached prefix shared by
    several sequences counts once per sequence, so only ``max_batch_total_tokens``, when set,
    bounds it), ``batch_max_total_tokens`` (that budget, or the KV capacity in tokens when
    unset), ``kv_blocks_*`` (``free`` counts evictable cached blocks too, so
    ``kv_blocks_free == kv_blocks_total`` whenever nothing runs; ``reserved`` are the free
    blocks running sequences may still take within their current chunk, never more than
    ``free``).

    Counters: prefill/decode steps, TGI's concat reasons, preemptions, refusals
    (``overloaded``), steps whose runner call failed, plans whose shape warmup never ran,
    prefix-cache tokens looked up and found.
    """

    queue_size: int
    batch_size: int
    batch_current_max_tokens: int
    batch_max_total_tokens: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_blocks_cached: int
    kv_blocks_reserved: int
    num_prefill_steps: int
    num_decode_steps: int
    num_concat_backpressure: int
    num_concat_wait_exceeded: int
    num_preemptions: int
    num_requests_refused: int
    num_failed_steps: int
    num_unwarmed_shapes: int
    prefix_cache_hit_tokens: int
    prefix_cache_query_tokens: int


def snapshot(
    counters: StepCounters,
    allocator: BlockAllocator,
    kv: KVBudget,
    queue_size: int,
    batch_size: int,
) -> SchedulerStats:
    """The scheduler's ``SchedulerStats`` from its parts."""
    usable_tokens = allocator.num_usable_blocks * allocator.block_size
    return SchedulerStats(
        queue_size=queue_size,
        batch_size=batch_size,
        batch_current_max_tokens=kv.reserved_tokens,
        batch_max_total_tokens=min(kv.token_budget, usable_tokens),
        kv_blocks_total=allocator.num_usable_blocks,
        kv_blocks_used=allocator.num_used,
        kv_blocks_free=allocator.num_available,
        kv_blocks_cached=allocator.num_evictable,
        kv_blocks_reserved=kv.outstanding_blocks,
        num_prefill_steps=counters.num_prefill_steps,
        num_decode_steps=counters.num_decode_steps,
        num_concat_backpressure=counters.num_concat_backpressure,
        num_concat_wait_exceeded=counters.num_concat_wait_exceeded,
        num_preemptions=counters.num_preemptions,
        num_requests_refused=counters.num_requests_refused,
        num_failed_steps=counters.num_failed_steps,
        num_unwarmed_shapes=counters.num_unwarmed_shapes,
        prefix_cache_hit_tokens=counters.prefix_cache_hit_tokens,
        prefix_cache_query_tokens=counters.prefix_cache_query_tokens,
    )
