"""The scheduler through the engine and the fake runner: admission, stops, KV, failures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from tgi_core.contract import (
    DecodeShape,
    FailureKind,
    FinishReason,
    GenerationRequest,
    ImageInput,
    PrefillItem,
    PrefillShape,
    RequestEvent,
    RequestFailed,
    StepOutput,
    StopChecker,
    TokenEvent,
)
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import BlockAllocator, Engine, Scheduler
from tgi_scheduler.testing import FakeRunner, run_until_idle

MakeEngine = Callable[..., tuple[Engine, FakeRunner]]


def req(
    request_id: int, num_tokens: int, max_new_tokens: int = 8, first: int = 100, **kw: Any
) -> GenerationRequest:
    prompt = tuple(range(first, first + num_tokens))
    return GenerationRequest(request_id, prompt, max_new_tokens=max_new_tokens, **kw)


def tokens(events: list[RequestEvent]) -> list[int]:
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


def finish(events: list[RequestEvent]) -> FinishReason | None:
    last = events[-1]
    assert isinstance(last, TokenEvent)
    assert all(isinstance(e, TokenEvent) and e.finish_reason is None for e in events[:-1])
    return last.finish_reason


def prefills_of(runner: FakeRunner, request_id: int) -> list[PrefillItem]:
    return [item for plan in runner.plans for item in plan.prefill if item.request_id == request_id]


def test_prefill_then_decode_then_release(make_engine: MakeEngine) -> None:
    engine, runner = make_engine()
    engine.add_request(req(1, 5, max_new_tokens=3))
    events = run_until_idle(engine)[1]
    assert tokens(events) == [105, 106, 107]
    assert finish(events) == FinishReason.LENGTH
    prefill, decode1, decode2, release = runner.plans
    assert prefill.shape == PrefillShape(2, 8, 0)
    (item,) = prefill.prefill
    assert item.token_ids == tuple(range(100, 105)) and item.num_cached_tokens == 0
    assert len(item.block_table) == 2  # 5 tokens + the slot of the generated one
    assert decode1.shape == DecodeShape(4, 2)
    assert decode2.decode[0].position == 6 and decode2.decode[0].token_id == 106
    assert release.shape is None and release.released == (1,)
    assert runner.violations == [] and runner.live_request_ids == frozenset()
    stats = engine.stats()
    assert stats.kv_blocks_free == stats.kv_blocks_total and stats.kv_blocks_used == 0


@pytest.mark.parametrize(
    ("max_new", "eos_after", "extra", "expected"),
    [
        (3, 3, {}, (3, FinishReason.LENGTH)),  # length is checked before EOS (TGI's order)
        (5, 2, {}, (2, FinishReason.EOS_TOKEN)),
        (5, 2, {"ignore_eos": True}, (5, FinishReason.LENGTH)),
    ],
)
def test_stop_criteria(
    make_engine: MakeEngine,
    max_new: int,
    eos_after: int,
    extra: dict[str, bool],
    expected: tuple[int, FinishReason],
) -> None:
    engine, _ = make_engine(runner={"eos_after": {1: eos_after}})
    engine.add_request(req(1, 5, max_new_tokens=max_new, **extra))
    events = run_until_idle(engine)[1]
    assert (len(tokens(events)), finish(events)) == expected


def test_ignore_eos_token_setting_ignores_eos_for_everyone(make_engine: MakeEngine) -> None:
    engine, _ = make_engine(runner={"eos_after": {1: 2}}, ignore_eos_token=True)
    engine.add_request(req(1, 5, max_new_tokens=4))
    assert len(tokens(run_until_idle(engine)[1])) == 4


def test_stop_sequence_checker_runs_after_eos() -> None:
    settings = SchedulerSettings(max_input_tokens=32, max_total_tokens=64, block_size=4)
    runner = FakeRunner(64, 4, eos_after={2: 2})
    fed: list[int] = []

    def factory(request: GenerationRequest) -> StopChecker:
        def checker(token_id: int) -> bool:
            fed.append(token_id)
            return token_id in (2, 103)

        return checker

    engine = Engine.create(settings, runner, eos_token_ids=[2], stop_checker_factory=factory)
    engine.add_request(req(1, 2, max_new_tokens=9))
    engine.add_request(req(2, 2, max_new_tokens=9))  # EOS at the token the checker stops on
    events = run_until_idle(engine)
    assert finish(events[1]) == FinishReason.STOP_SEQUENCE and tokens(events[1]) == [102, 103]
    assert finish(events[2]) == FinishReason.EOS_TOKEN
    assert fed == [102, 102, 103]  # request 2's EOS token never reached its checker


def test_queue_seconds_and_prompt_logprobs_come_with_the_first_token(
    make_engine: MakeEngine,
) -> None:
    now = [0.0]
    engine, _ = make_engine(clock=lambda: now[0])
    engine.add_request(req(1, 6, max_new_tokens=3, prompt_logprobs=True))
    now[0] = 0.25
    events = run_until_idle(engine)[1]
    first, *rest = events
    assert isinstance(first, TokenEvent)
    assert first.queue_seconds == 0.25
    assert first.prompt_logprobs == (None, -1.0, -1.0, -1.0, -1.0, -1.0)
    assert all(isinstance(e, TokenEvent) and e.queue_seconds is None for e in rest)
    assert all(isinstance(e, TokenEvent) and e.prompt_logprobs is None for e in rest)


def test_small_waiting_groups_wait_for_max_waiting_tokens(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(waiting_served_ratio=0.5, max_waiting_tokens=5)
    for i in range(4):
        engine.add_request(req(i, 5, max_new_tokens=12, first=100 + 10 * i))
    engine.step()
    engine.add_request(req(9, 5, max_new_tokens=12, first=900))  # 1 < floor(4 * 0.5)
    for _ in range(5):
        engine.step()
    kinds = ["prefill" if p.prefill else "decode" for p in runner.plans]
    assert kinds == ["prefill", "decode", "decode", "decode", "decode", "prefill"]
    assert engine.stats().num_concat_wait_exceeded == 1
    engine.add_request(req(10, 5, first=1000))
    engine.add_request(req(11, 5, first=1100))  # 2 >= floor(5 * 0.5): joins at once
    engine.step()
    assert [i.request_id for i in runner.plans[-1].prefill] == [10, 11]
    assert engine.stats().num_concat_backpressure == 1
    run_until_idle(engine)
    assert runner.violations == []


def test_overloaded_requests_are_refused_at_once(make_engine: MakeEngine) -> None:
    engine, _ = make_engine(max_concurrent_requests=2)
    for i in range(4):
        engine.add_request(req(i, 3))
    engine.abort(3)  # a refused request the client gave up on: no event at all
    events = engine.step()
    failed = [e for e in events if isinstance(e, RequestFailed)]
    assert failed == [RequestFailed(2, FailureKind.OVERLOADED)]
    assert engine.stats().num_requests_refused == 2
    assert set(run_until_idle(engine)) == {0, 1}


def test_abort_queued_request_costs_nothing(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(max_batch_size=1)
    engine.add_request(req(1, 5))
    engine.add_request(req(2, 5, first=300))
    engine.abort(2)
    events = run_until_idle(engine)
    assert set(events) == {1}
    planned = [i.request_id for p in runner.plans for i in p.prefill]
    planned += [i.request_id for p in runner.plans for i in p.decode]
    assert set(planned) == {1}


def test_abort_running_request_releases_its_blocks(make_engine: MakeEngine) -> None:
    engine, runner = make_engine()
    engine.add_request(req(1, 9, max_new_tokens=20))
    engine.step()
    engine.step()
    assert engine.stats().kv_blocks_used > 0
    engine.abort(1)
    assert engine.has_unfinished()  # the release still has to reach the runner
    assert engine.step() == []
    assert runner.plans[-1].released == (1,) and runner.plans[-1].shape is None
    assert not engine.has_unfinished()
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.kv_blocks_free == stats.kv_blocks_total
    assert runner.live_request_ids == frozenset()


def test_long_generation_renews_its_chunk_without_a_new_prefill(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(max_generation_chunk=16)
    engine.add_request(req(1, 5, max_new_tokens=40))
    engine.step()
    assert engine.stats().batch_current_max_tokens == 5 + 16
    for _ in range(16):
        engine.step()
    assert engine.stats().batch_current_max_tokens == 5 + 16 + 16
    events = run_until_idle(engine)[1]
    assert len(prefills_of(runner, 1)) == 1
    assert len(tokens(events)) == 40 - 17 and finish(events) == FinishReason.LENGTH
    assert engine.stats().num_preemptions == 0


def test_preemption_when_the_next_chunk_does_not_fit(make_engine: MakeEngine) -> None:
    # 16 usable blocks of 4 tokens; each sequence reserves 8 + 16 tokens (6 blocks) at first.
    engine, runner = make_engine(num_kv_blocks=17, max_generation_chunk=16)
    engine.add_request(req(1, 8, max_new_tokens=40, first=100))
    engine.add_request(req(2, 8, max_new_tokens=40, first=200))
    events: dict[int, list[RequestEvent]] = {1: [], 2: []}
    while engine.stats().num_preemptions == 0:
        for event in engine.step():
            events[event.request_id].append(event)
    engine.add_request(req(3, 4, max_new_tokens=4, first=300))  # shorter, but after 2
    for request_id, more in run_until_idle(engine).items():
        events.setdefault(request_id, []).extend(more)
    assert tokens(events[1]) == list(range(108, 148))
    assert tokens(events[2]) == list(range(208, 248))  # as if it had never been preempted
    assert finish(events[2]) == FinishReason.LENGTH
    _, resumed = prefills_of(runner, 2)
    assert resumed.token_ids == tuple(range(200, 224)) and resumed.num_prompt_tokens == 8
    assert resumed.num_cached_tokens > 0  # its full blocks stayed in the prefix cache
    released_at = next(i for i, p in enumerate(runner.plans) if 2 in p.released)
    resumed_at = next(i for i, p in enumerate(runner.plans) if resumed in p.prefill)
    third_at = next(
        i for i, p in enumerate(runner.plans) if any(x.request_id == 3 for x in p.prefill)
    )
    assert released_at < resumed_at <= third_at
    assert runner.violations == [] and engine.stats().kv_blocks_used == 0


def test_sequence_too_long_to_prefill_again_ends_with_length(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(
        num_kv_blocks=17, max_input_tokens=8, max_batch_prefill_tokens=16, max_generation_chunk=8
    )
    engine.add_request(req(1, 8, max_new_tokens=50, first=100))
    engine.add_request(req(2, 8, max_new_tokens=50, first=200))
    events = run_until_idle(engine)
    # At 32 tokens the pool is empty: 1 cannot renew and is too long to preempt, so it ends;
    # its blocks let 2 renew and finish.
    assert len(tokens(events[1])) == 24 and finish(events[1]) == FinishReason.LENGTH
    assert len(tokens(events[2])) == 50 and finish(events[2]) == FinishReason.LENGTH
    assert engine.stats().num_preemptions == 0 and runner.violations == []


def test_prefix_cache_reuses_a_repeated_prompt(make_engine: MakeEngine) -> None:
    engine, runner = make_engine()
    engine.add_request(req(1, 13, max_new_tokens=2))
    first = run_until_idle(engine)[1]
    engine.add_request(req(2, 13, max_new_tokens=2))
    second = run_until_idle(engine)[2]
    assert tokens(first) == tokens(second)
    (item,) = prefills_of(runner, 2)
    assert item.num_cached_tokens == 12
    plan = next(p for p in runner.plans if item in p.prefill)
    assert plan.shape == PrefillShape(2, 8, 4)  # one new token; 4 blocks in the table
    assert engine.stats().prefix_cache_hit_tokens == 12


@pytest.mark.parametrize(
    ("second", "expected_cached"),
    [
        (req(2, 12, max_new_tokens=1), 8),  # never the whole prompt: one token is computed
        (req(2, 13, max_new_tokens=1, adapter_id="lora"), 0),  # other adapter, other chain
        (req(2, 13, max_new_tokens=1, prompt_logprobs=True), 0),  # logprobs need every token
    ],
)
def test_prefix_cache_limits(
    make_engine: MakeEngine, second: GenerationRequest, expected_cached: int
) -> None:
    engine, runner = make_engine()
    engine.add_request(req(1, 13, max_new_tokens=1))
    run_until_idle(engine)
    engine.add_request(second)
    run_until_idle(engine)
    assert prefills_of(runner, 2)[0].num_cached_tokens == expected_cached


def test_prefix_caching_off(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(prefix_caching=False)
    for request_id in (1, 2):
        engine.add_request(req(request_id, 13, max_new_tokens=1))
        run_until_idle(engine)
    assert prefills_of(runner, 2)[0].num_cached_tokens == 0
    assert engine.stats().kv_blocks_cached == 0


def test_a_failed_prefill_fails_only_its_requests(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(runner={"fail_step_ids": {3}})
    engine.add_request(req(1, 5, max_new_tokens=6))
    events = engine.step() + engine.step()
    engine.add_request(req(2, 5, max_new_tokens=6, first=200))
    failed = engine.step()
    detail = "scripted failure at step 3"  # the runner's exception, no HTTP wording
    assert failed == [RequestFailed(2, FailureKind.GENERATION, detail)]
    rest = run_until_idle(engine)
    assert 2 not in rest and len(tokens(events + rest[1])) == 6
    stats = engine.stats()
    assert stats.num_failed_steps == 1 and stats.kv_blocks_used == 0
    assert runner.violations == []


def test_a_failed_decode_fails_the_running_batch(make_engine: MakeEngine) -> None:
    engine, _ = make_engine(runner={"fail_step_ids": {2}})
    engine.add_request(req(1, 5))
    engine.add_request(req(2, 5, first=200))
    engine.step()
    failed = engine.step()
    assert {e.request_id for e in failed} == {1, 2}
    assert all(isinstance(e, RequestFailed) for e in failed)
    assert run_until_idle(engine) == {}


@pytest.mark.parametrize("fail_at", [1, 3])  # at its prefill, or while decoding
def test_a_sequence_the_runner_fails_alone_fails_only_its_request(
    make_engine: MakeEngine, fail_at: int
) -> None:
    engine, runner = make_engine(runner={"fail_after": {2: fail_at}})
    for request_id, first in ((1, 100), (2, 200), (3, 300)):
        engine.add_request(req(request_id, 5, max_new_tokens=6, first=first))
    events = run_until_idle(engine)
    detail = "scripted failure of sequence 2"  # the runner's error, no HTTP wording
    assert events[2][-1] == RequestFailed(2, FailureKind.GENERATION, detail)
    assert len(tokens(events[2])) == fail_at - 1
    for other in (1, 3):  # the neighbours finish untouched and never see its error
        assert len(tokens(events[other])) == 6
        assert not any(isinstance(e, RequestFailed) for e in events[other])
    stats = engine.stats()
    assert stats.num_failed_steps == 0 and stats.kv_blocks_used == 0
    assert stats.batch_size == 0 and stats.queue_size == 0
    assert runner.live_request_ids == frozenset() and runner.violations == []


def test_update_rejects_an_output_for_another_plan() -> None:
    settings = SchedulerSettings(max_input_tokens=32, max_total_tokens=64, block_size=4)
    scheduler = Scheduler(settings, BlockAllocator(64, 4), eos_token_ids=[2])
    scheduler.add_request(req(1, 4))
    plan = scheduler.schedule()
    assert plan is not None
    with pytest.raises(ValueError, match="returned 0 outputs"):
        scheduler.update(plan, StepOutput(plan.step_id, ()))


def test_requests_outside_the_limits_are_programming_errors(make_engine: MakeEngine) -> None:
    engine, _ = make_engine()
    with pytest.raises(ValueError, match=r"1\.\.32 are allowed"):
        engine.add_request(req(1, 33))
    with pytest.raises(ValueError, match="0 new tokens"):
        engine.add_request(req(1, 3, max_new_tokens=0))
    engine.add_request(req(1, 3))
    with pytest.raises(ValueError, match="already in flight"):
        engine.add_request(req(1, 3))


@pytest.mark.parametrize(
    ("overrides", "num_blocks", "message"),
    [
        ({"max_input_tokens": 64}, 64, r"`max_input_tokens`\(64\) must be < `max_total_tokens`"),
        ({"max_batch_prefill_tokens": 16}, 64, "must be >= `max_input_tokens`"),
        ({"max_batch_total_tokens": 32}, 64, "must be <= `max_batch_total_tokens`"),
        ({"max_batch_size": 0}, 64, "`max_batch_size` must be > 0"),
        ({}, 16, "Not enough memory to handle `max_total_tokens=64`"),
    ],
)
def test_limits_are_checked(overrides: dict[str, Any], num_blocks: int, message: str) -> None:
    base = SchedulerSettings(max_input_tokens=32, max_total_tokens=64, block_size=4)
    settings = replace(base, **overrides)
    with pytest.raises(ValueError, match=message):
        Scheduler(settings, BlockAllocator(num_blocks, 4), eos_token_ids=[2])


def _image(data: bytes) -> ImageInput:
    return ImageInput(data, "image/png", 8, 8)


def test_prefix_cache_never_shares_blocks_across_images(make_engine: MakeEngine) -> None:
    # Same ids (an image's placeholders are the same tokens whatever the image), other pixels.
    engine, runner = make_engine()
    for request_id, data in ((1, b"first"), (2, b"second"), (3, b"first")):
        engine.add_request(req(request_id, 13, max_new_tokens=1, images=(_image(data),)))
        run_until_idle(engine)
    cached = [prefills_of(runner, i)[0].num_cached_tokens for i in (1, 2, 3)]
    assert cached == [0, 0, 12]  # the same image again does hit
    engine.add_request(req(4, 13, max_new_tokens=1))  # text only: not the image chains either
    run_until_idle(engine)
    assert prefills_of(runner, 4)[0].num_cached_tokens == 0
    assert prefills_of(runner, 2)[0].images == (_image(b"second"),)


def test_a_preempted_sequence_gets_its_images_again(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(num_kv_blocks=17, max_generation_chunk=16)
    images = (_image(b"pixels"),)
    engine.add_request(req(1, 8, max_new_tokens=40, first=100))
    engine.add_request(req(2, 8, max_new_tokens=40, first=200, images=images))
    run_until_idle(engine)
    assert engine.stats().num_preemptions > 0
    first, resumed = prefills_of(runner, 2)
    assert first.images == resumed.images == images
