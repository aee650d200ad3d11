"""The engine's step histograms (``StepStats``): what each step records, by method."""

from __future__ import annotations

import msgspec

from tgi_core.contract import GenerationRequest, TokenEvent
from tgi_core.engine_stats import (
    DURATION_BUCKETS,
    HistogramSnapshot,
    MethodStats,
    SchedulerStats,
    StepStats,
)
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import BlockAllocator, Engine, Scheduler
from tgi_scheduler.stats import BATCH_SIZE_BUCKETS
from tgi_scheduler.testing import FakeRunner, run_until_idle

SETTINGS = SchedulerSettings(max_input_tokens=32, max_total_tokens=64, block_size=4)


def count(histogram: HistogramSnapshot) -> int:
    return sum(histogram.counts)


def timed(stats: MethodStats) -> list[int]:
    return [count(h) for h in (stats.forward, stats.decode, stats.filter, stats.inference)]


def engine_over(runner: FakeRunner) -> Engine:
    engine = Engine.create(SETTINGS, runner, eos_token_ids=[2])
    engine.warmup()
    return engine


def steps_of(engine: Engine) -> StepStats:
    steps = engine.stats().steps
    assert steps is not None
    return steps


def test_each_step_is_timed_under_its_method() -> None:
    engine = engine_over(FakeRunner(64, 4))
    engine.add_request(GenerationRequest(1, (5, 6, 7), max_new_tokens=4, ignore_eos=True))
    engine.add_request(GenerationRequest(2, (5, 6), max_new_tokens=4, ignore_eos=True))
    events = run_until_idle(engine)
    stats = engine.stats()
    steps = stats.steps
    assert steps is not None
    # One prefill of both requests, then three decodes.
    assert (stats.num_prefill_steps, stats.num_decode_steps) == (1, 3)
    assert timed(steps.prefill) == [1, 1, 1, 1] and steps.prefill.num_success == 1
    assert timed(steps.decode) == [3, 3, 3, 3] and steps.decode.num_success == 3
    for histogram in (steps.prefill.inference, steps.decode.forward):
        assert histogram.bounds == DURATION_BUCKETS and histogram.sum > 0
    # The whole step takes at least its runner call.
    assert steps.decode.inference.sum >= steps.decode.forward.sum
    # Both requests came from the queue at once, into an empty batch: no concat.
    assert steps.next_size.bounds == BATCH_SIZE_BUCKETS
    assert steps.next_size.counts[1] == 1 and count(steps.next_size) == 1
    assert steps.next_size.sum == 2 and count(steps.concat) == 0
    # One observation per token, of 0 speculated tokens.
    num_tokens = sum(isinstance(e, TokenEvent) for es in events.values() for e in es)
    assert num_tokens == 8
    assert steps.skipped_tokens.counts == (num_tokens, 0) and steps.skipped_tokens.sum == 0


def test_a_prefill_joining_a_running_batch_is_a_concat() -> None:
    engine = engine_over(FakeRunner(64, 4))
    engine.add_request(GenerationRequest(1, (5, 6, 7), max_new_tokens=6, ignore_eos=True))
    engine.step()
    engine.step()
    engine.add_request(GenerationRequest(2, (5, 6), max_new_tokens=2, ignore_eos=True))
    engine.step()  # request 2's prefill while request 1 runs
    steps = steps_of(engine)
    assert count(steps.concat) == 1 and steps.concat.sum > 0
    assert count(steps.prefill.filter) == 2 and count(steps.next_size) == 2
    assert steps.next_size.counts[0] == 2  # each prefill admitted one request


def test_a_failed_step_counts_as_a_failure_of_its_method() -> None:
    runner = FakeRunner(64, 4, fail_step_ids={2})
    engine = engine_over(runner)
    engine.add_request(GenerationRequest(1, (5, 6, 7), max_new_tokens=4, ignore_eos=True))
    run_until_idle(engine)
    steps = steps_of(engine)
    assert (steps.prefill.num_success, steps.prefill.num_failure) == (1, 0)
    assert (steps.decode.num_success, steps.decode.num_failure) == (0, 1)
    # Planned, so filtered, but neither run through nor decoded.
    assert timed(steps.decode) == [0, 0, 1, 0]


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    engine = engine_over(FakeRunner(64, 4))
    for request_id in range(1, 4):  # three requests, one prefill
        engine.add_request(GenerationRequest(request_id, (5, 6), max_new_tokens=1))
    run_until_idle(engine)
    next_size = steps_of(engine).next_size
    assert next_size.counts[2] == 1  # le="3.0"
    assert len(next_size.counts) == len(next_size.bounds) + 1


def test_the_stats_cross_the_process_boundary() -> None:
    engine = engine_over(FakeRunner(64, 4))
    engine.add_request(GenerationRequest(1, (5, 6, 7), max_new_tokens=2))
    run_until_idle(engine)
    stats = engine.stats()
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(stats), type=SchedulerStats) == stats


def test_a_scheduler_alone_has_no_step_stats() -> None:
    scheduler = Scheduler(SETTINGS, BlockAllocator(64, 4), eos_token_ids=[2])
    assert scheduler.stats().steps is None
