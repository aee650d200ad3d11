"""What the engine reports, as it crosses to the HTTP workers (``EngineStatus``).

``SchedulerStats`` is a frozen ``msgspec.Struct`` so that it crosses the engine-process
boundary as it is; a Prometheus exporter maps its fields onto TGI's metrics
(``tgi_queue_size``, ``tgi_batch_current_size``, ``tgi_batch_current_max_tokens``,
``tgi_batch_max_total_tokens``, ``tgi_batch_inference_count{method}``,
``tgi_batch_concat{reason}``) plus the Gaudi-side ones TGI lacks (KV blocks, prefix-cache
hits, preemptions, shapes run without warmup). Counters only grow.

``StepStats`` are TGI's per-step histograms (``tgi_batch_*_duration{method}``,
``tgi_batch_next_size``, ``tgi_request_skipped_tokens``) as bucket counts, kept in the
engine process so that every HTTP worker exports the same engine-wide values. The scheduler
fills them in (``tgi_scheduler.stats``); the server exports them; neither needs the other.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DURATION_BUCKETS",
    "HistogramSnapshot",
    "MethodStats",
    "SchedulerStats",
    "StepStats",
]


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
