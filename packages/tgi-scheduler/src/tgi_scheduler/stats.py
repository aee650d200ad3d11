"""What the scheduler reports: running totals (``StepCounters``), their snapshot, and the
engine's step histograms (``StepTimer``).

The types that cross to the HTTP workers (``SchedulerStats``, ``StepStats``) are the
contract's (``tgi_core.engine_stats``); this module fills them in. What each timing
measures: the ``tgi_scheduler.engine`` module docstring.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from tgi_core.engine_stats import (
    DURATION_BUCKETS,
    HistogramSnapshot,
    MethodStats,
    SchedulerStats,
    StepStats,
)

if TYPE_CHECKING:
    from tgi_scheduler.block_allocator import BlockAllocator
    from tgi_scheduler.kv_budget import KVBudget

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "Method",
    "StepCounters",
    "StepTimer",
    "skipped_tokens_buckets",
    "snapshot",
]

Method = Literal["prefill", "decode"]

BATCH_SIZE_BUCKETS = tuple(float(size) for size in range(1, 1025))
"""``tgi_batch_next_size``'s upper bounds, TGI's: 1 to 1024."""


def skipped_tokens_buckets(speculate: int) -> tuple[float, ...]:
    """``tgi_request_skipped_tokens``'s upper bounds, TGI's ``0..=speculate``."""
    return tuple(float(n) for n in range(speculate + 1))


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


# --- step timings ---------------------------------------------------------------------------


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total)


class _MethodTimer:
    __slots__ = ("decode", "filter", "forward", "inference", "num_failure", "num_success")

    def __init__(self) -> None:
        self.forward = _Histogram(DURATION_BUCKETS)
        self.decode = _Histogram(DURATION_BUCKETS)
        self.filter = _Histogram(DURATION_BUCKETS)
        self.inference = _Histogram(DURATION_BUCKETS)
        self.num_success = 0
        self.num_failure = 0

    def snapshot(self) -> MethodStats:
        return MethodStats(
            self.forward.snapshot(),
            self.decode.snapshot(),
            self.filter.snapshot(),
            self.inference.snapshot(),
            self.num_success,
            self.num_failure,
        )


class StepTimer:
    """The engine's running step histograms (plain lists: hot path); ``snapshot`` for IPC."""

    __slots__ = ("_concat", "_methods", "_next_size", "_skipped_tokens")

    def __init__(self, speculate: int = 0) -> None:
        self._methods: dict[Method, _MethodTimer] = {
            "prefill": _MethodTimer(),
            "decode": _MethodTimer(),
        }
        self._concat = _Histogram(DURATION_BUCKETS)
        self._next_size = _Histogram(BATCH_SIZE_BUCKETS)
        self._skipped_tokens = _Histogram(skipped_tokens_buckets(speculate))

    def scheduled(self, method: Method, num_new: int, seconds: float, *, joined: bool) -> None:
        """A plan was made in ``seconds``; ``num_new`` sequences came from the queue
        (``tgi_batch_next_size``), into a running batch when ``joined`` (a concat)."""
        self._methods[method].filter.observe(seconds)
        if num_new:
            self._next_size.observe(num_new)
        if joined:
            self._concat.observe(seconds)

    def failed(self, method: Method) -> None:
        self._methods[method].num_failure += 1

    def succeeded(
        self,
        method: Method,
        forward: float,
        decode: float,
        inference: float,
        tokens_per_sequence: Iterable[int],
    ) -> None:
        """A step ran: its runner call, its update and the whole step took these seconds,
        and gave each sequence these many tokens (more than one: speculated tokens it
        accepted, each observed in ``tgi_request_skipped_tokens`` as TGI's ``n - 1``)."""
        timer = self._methods[method]
        timer.forward.observe(forward)
        timer.decode.observe(decode)
        timer.inference.observe(inference)
        timer.num_success += 1
        for num_tokens in tokens_per_sequence:
            self._skipped_tokens.observe(num_tokens - 1)

    def snapshot(self) -> StepStats:
        return StepStats(
            self._methods["prefill"].snapshot(),
            self._methods["decode"].snapshot(),
            self._concat.snapshot(),
            self._next_size.snapshot(),
            self._skipped_tokens.snapshot(),
        )
