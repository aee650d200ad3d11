"""What the scheduler reports: a snapshot for gauges and running totals for counters.

``SchedulerStats`` is a frozen ``msgspec.Struct`` so that it crosses the engine-process
boundary as it is; a Prometheus exporter maps its fields onto TGI's metrics
(``tgi_queue_size``, ``tgi_batch_current_size``, ``tgi_batch_current_max_tokens``,
``tgi_batch_max_total_tokens``, ``tgi_batch_inference_count{method}``,
``tgi_batch_concat{reason}``) plus the Gaudi-side ones TGI lacks (KV blocks, prefix-cache
hits, preemptions, shapes run without warmup). Counters only grow.

The engine adds ``StepStats``: TGI's per-step histograms (``tgi_batch_*_duration{method}``,
``tgi_batch_next_size``, ``tgi_request_skipped_tokens``) kept as bucket counts by a
``StepTimer`` in the engine process, so that every HTTP worker exports the same engine-wide
values. What each timing measures: the ``tgi_scheduler.engine`` module docstring.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from tgi_scheduler.block_allocator import BlockAllocator
    from tgi_scheduler.kv_budget import KVBudget

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "DURATION_BUCKETS",
    "HistogramSnapshot",
    "Method",
    "MethodStats",
    "SchedulerStats",
    "StepCounters",
    "StepStats",
    "StepTimer",
    "skipped_tokens_buckets",
    "snapshot",
]

Method = Literal["prefill", "decode"]


def _duration_buckets(num_buckets: int = 35) -> tuple[float, ...]:
    """TGI's duration buckets: from 0.1 ms, times 1.5 before each bucket (same float steps)."""
    buckets: list[float] = []
    value = 0.0001
    for _ in range(num_buckets):
        value *= 1.5
        buckets.append(value)
    return tuple(buckets)


DURATION_BUCKETS = _duration_buckets()
"""Upper bounds (s) of every ``*_duration`` histogram, TGI's: 1.5e-4 s times 1.5, 35 of them."""
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

    ``steps``: the engine's step histograms (None from a scheduler without an engine).
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
    steps: StepStats | None = None


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


class HistogramSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """A histogram's state: ``counts[i]`` values fell in ``(bounds[i-1], bounds[i]]``, the
    last count above every bound (not cumulative); ``sum`` is the sum of the values."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float


class MethodStats(msgspec.Struct, frozen=True):
    """The steps of one method (prefill or decode): their timings (s) and outcomes."""

    forward: HistogramSnapshot
    decode: HistogramSnapshot
    filter: HistogramSnapshot
    inference: HistogramSnapshot
    num_success: int
    num_failure: int


class StepStats(msgspec.Struct, frozen=True):
    """The engine's step histograms (``concat`` is TGI's, recorded under method decode)."""

    prefill: MethodStats
    decode: MethodStats
    concat: HistogramSnapshot
    next_size: HistogramSnapshot
    skipped_tokens: HistogramSnapshot


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
