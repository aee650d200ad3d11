"""Requests the runner must ready first (``RequestPreparer``), through the engine and the fake
runner: they wait outside the batch while the others keep stepping, run once ready, can be
aborted while they wait, and a failed preparation fails them alone."""

from __future__ import annotations

from collections.abc import Callable

from tgi_core.contract import (
    FailureKind,
    FinishReason,
    GenerationRequest,
    RequestEvent,
    RequestFailed,
    RequestPreparer,
    TokenEvent,
)
from tgi_scheduler import Engine
from tgi_scheduler.testing import FakeRunner, run_until_idle

MakeEngine = Callable[..., tuple[Engine, FakeRunner]]


def req(request_id: int, max_new_tokens: int = 8, first: int = 100) -> GenerationRequest:
    return GenerationRequest(request_id, tuple(range(first, first + 5)), max_new_tokens)


def tokens(events: list[RequestEvent]) -> list[int]:
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


def test_the_fake_runner_is_a_request_preparer() -> None:
    assert isinstance(FakeRunner(), RequestPreparer)


def test_a_slow_preparation_waits_while_the_others_get_a_token_every_step(
    make_engine: MakeEngine,
) -> None:
    engine, runner = make_engine(runner={"slow_prepare": {2: 6}})
    engine.add_request(req(1, max_new_tokens=20, first=100))
    engine.step()  # 1's prefill
    engine.add_request(req(2, max_new_tokens=4, first=200))
    steps: list[list[int]] = []
    while engine.scheduler.preparing:
        steps.append([e.request_id for e in engine.step()])
        stats = engine.stats()
        if engine.scheduler.preparing:
            [only] = runner.plans[-1].decode  # 2 holds no blocks while it waits
            assert stats.kv_blocks_used == len(only.block_table) and stats.queue_size == 1
    # asked at arrival, then at every step: 1 gets a token each time until the 7th answer
    # says ready; 2 is prefilled in that very step (asked once more, right before)
    assert steps == [[1]] * 5 + [[2]]
    assert runner.prepare_calls[2] == 8
    events = run_until_idle(engine)
    assert tokens(events[2]) == [206, 207, 208]
    assert events[2][-1].finish_reason == FinishReason.LENGTH  # type: ignore[union-attr]
    assert runner.violations == []


def test_a_waiting_request_holds_a_concurrency_slot_until_it_is_aborted(
    make_engine: MakeEngine,
) -> None:
    engine, runner = make_engine(runner={"slow_prepare": {1: 1000}}, max_concurrent_requests=2)
    engine.add_request(req(1))
    engine.add_request(req(2))
    engine.add_request(req(3))  # 1 waits, 2 runs: full
    events = engine.step()
    assert [(e.request_id, type(e)) for e in events] == [(3, RequestFailed), (2, TokenEvent)]
    assert events[0] == RequestFailed(3, FailureKind.OVERLOADED)
    while engine.stats().batch_size:
        assert all(e.request_id == 2 for e in engine.step())
    assert engine.has_unfinished() and engine.stats().queue_size == 1
    engine.abort(1)
    assert engine.step() == []  # releases 2's runner state, nothing of 1's
    assert not engine.has_unfinished()
    stats = engine.stats()
    assert stats.queue_size == 0 and stats.batch_size == 0 and stats.kv_blocks_used == 0
    engine.add_request(req(4))
    engine.add_request(req(5))  # both slots are free again
    events_by_id = run_until_idle(engine)
    assert sorted(events_by_id) == [4, 5]
    assert all(1 not in (x.request_id for x in p.prefill) for p in runner.plans)  # never ran
    assert runner.violations == []


def test_a_failed_preparation_fails_that_request_alone(make_engine: MakeEngine) -> None:
    engine, runner = make_engine(
        runner={"slow_prepare": {2: 3}, "fail_prepare": {2, 3}}, max_batch_size=4
    )
    for request_id in (1, 2, 3, 4):
        engine.add_request(req(request_id, max_new_tokens=6, first=100 * request_id))
    events = run_until_idle(engine)
    for request_id in (2, 3):
        [failure] = events[request_id]
        detail = f"scripted preparation failure of sequence {request_id}"
        assert failure == RequestFailed(request_id, FailureKind.GENERATION, detail)
    assert tokens(events[1]) == list(range(105, 111))
    assert tokens(events[4]) == list(range(405, 411))
    assert all(x.request_id not in (2, 3) for p in runner.plans for x in p.prefill)
    assert engine.stats().kv_blocks_used == 0 and runner.violations == []


def test_a_preempted_sequence_is_prepared_again_before_its_recompute(
    make_engine: MakeEngine,
) -> None:
    # 16 usable blocks of 4 tokens: the second sequence is preempted (test_scheduler.py)
    engine, runner = make_engine(
        num_kv_blocks=17, max_generation_chunk=16, runner={"slow_prepare": {1: 0, 2: 0}}
    )
    engine.add_request(GenerationRequest(1, tuple(range(100, 108)), max_new_tokens=40))
    engine.add_request(GenerationRequest(2, tuple(range(200, 208)), max_new_tokens=40))
    events: dict[int, list[RequestEvent]] = {1: [], 2: []}
    while engine.stats().num_preemptions == 0:
        for event in engine.step():
            events[event.request_id].append(event)
    # its recompute is not ready for three more answers: it waits outside the queue
    runner.slow_prepare[2] = runner.prepare_calls[2] + 3
    for request_id, more in run_until_idle(engine).items():
        events[request_id].extend(more)
    assert tokens(events[2]) == list(range(208, 248))  # as if it had never been preempted
    prefills = [x for p in runner.plans for x in p.prefill if x.request_id == 2]
    assert len(prefills) == 2 and prefills[1].token_ids[:24] == tuple(range(200, 224))
    assert runner.prepare_calls[2] >= 2 + 3 + 1
    assert runner.violations == []  # never prefilled without a fresh "ready"
