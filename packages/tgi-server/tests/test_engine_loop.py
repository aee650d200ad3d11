"""The engine loop on a thread, over a real Engine and tgi_scheduler's FakeRunner.

Workers are ``InProcessEngineClient``s (and, for counting messages, a recording mailbox):
every request gets its tokens in order and one final event, aborts free everything,
overload and runner failures follow TGI, and a stop drains.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from tgi_core.contract import (
    FailureKind,
    FinishReason,
    GenerationRequest,
    RequestEvent,
    RequestFailed,
    StepOutput,
    StepPlan,
    TokenEvent,
)
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import Engine
from tgi_scheduler.testing import FakeRunner
from tgi_server.engine import InProcessEngine, describe_engine
from tgi_server.engine_client import InProcessEngineClient
from tgi_server.ipc import EngineMessage, EngineStatus, StepEvents, Submit

SETTINGS = SchedulerSettings(
    max_concurrent_requests=64,
    max_batch_size=16,
    max_batch_prefill_tokens=512,
    max_input_tokens=32,
    max_total_tokens=96,
    batch_bucket_size=4,
    prefill_batch_bucket_size=4,
    pad_sequence_to_multiple_of=16,
    block_size=16,
    queue_policy="fifo",
)


class ScriptedRunner(FakeRunner):
    """A FakeRunner that can pause before a given step and whose device can break.

    ``pause_before``: the engine thread blocks in that ``execute`` call (0-based count) until
    ``resume`` is set, so a test can act while requests are certainly in flight.
    ``break_after``: from that many executed steps on, the device is ``broken`` and every step
    raises, until the test clears ``broken``.
    """

    def __init__(self, *, pause_before: int | None = None, break_after: int | None = None) -> None:
        super().__init__(num_kv_blocks=128, block_size=16)
        self.pause_before = pause_before
        self.break_after = break_after
        self.num_executed = 0
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.broken = threading.Event()

    def execute(self, plan: StepPlan) -> StepOutput:
        if self.num_executed == self.pause_before:
            self.paused.set()
            assert self.resume.wait(30), "the test never resumed the runner"
        if self.num_executed == self.break_after:
            self.broken.set()
        self.num_executed += 1
        if self.broken.is_set():
            # FakeRunner's scripted failure keeps its bookkeeping of released sequences.
            self.fail_step_ids.add(plan.step_id)
        return super().execute(plan)

    async def wait_paused(self) -> None:
        assert await asyncio.to_thread(self.paused.wait, 10), "the engine never paused"


class FaultyEngine(Engine):
    """An Engine whose next ``step()`` can be made to raise (a bug outside the runner)."""

    raise_next = False

    def step(self) -> list[RequestEvent]:
        if self.raise_next:
            self.raise_next = False
            raise RuntimeError("scheduler bug")
        return super().step()


def make_engine(
    runner: FakeRunner | None = None,
    settings: SchedulerSettings = SETTINGS,
    engine_type: type[Engine] = Engine,
) -> InProcessEngine:
    runner = runner or FakeRunner(num_kv_blocks=128, block_size=16)
    engine = engine_type.create(settings, runner, eos_token_ids=(2,))
    report = engine.warmup()
    info = describe_engine(engine, report, model_id="fake", eos_token_ids=(2,))
    return InProcessEngine(engine, info, drain_timeout_s=10.0, idle_poll_ms=20)


@contextmanager
def running(engine: InProcessEngine) -> Iterator[InProcessEngine]:
    engine.start()
    try:
        yield engine
    finally:
        engine.stop(timeout_s=30)
        assert not engine.is_alive


def request(
    client: InProcessEngineClient, max_new_tokens: int, first: int = 10
) -> GenerationRequest:
    prompt_ids = (first, first + 1, first + 2)
    return GenerationRequest(client.next_request_id(), prompt_ids, max_new_tokens)


async def collect(events: AsyncIterator[RequestEvent]) -> list[RequestEvent]:
    return [event async for event in events]


def assert_completed(events: list[RequestEvent], req: GenerationRequest) -> None:
    """FakeRunner's tokens count up from the prompt; exactly the last one is final."""
    expected = list(range(req.prompt_ids[-1] + 1, req.prompt_ids[-1] + 1 + req.max_new_tokens))
    assert all(isinstance(event, TokenEvent) for event in events)
    assert [event.token_id for event in events] == expected  # type: ignore[union-attr]
    assert [event.request_id for event in events] == [req.request_id] * len(events)
    finishes = [event.finish_reason for event in events]  # type: ignore[union-attr]
    assert finishes == [None] * (len(events) - 1) + [FinishReason.LENGTH]


def assert_idle(status: EngineStatus) -> None:
    stats = status.engine
    assert status.num_in_flight == 0
    assert (stats.queue_size, stats.batch_size, stats.kv_blocks_used) == (0, 0, 0)
    assert stats.kv_blocks_free == stats.kv_blocks_total


class RecordingMailbox:
    """A worker that records what the engine sends it (on the engine thread)."""

    def __init__(self) -> None:
        self.messages: list[EngineMessage] = []
        self.done = threading.Event()
        self.num_finished = 0
        self.expected = 0

    def deliver(self, message: EngineMessage) -> bool:
        self.messages.append(message)
        if isinstance(message, StepEvents):
            self.num_finished += sum(
                1 for e in message.events if isinstance(e, RequestFailed) or e.finish_reason
            )
        if self.num_finished >= self.expected:
            self.done.set()
        return True


def test_one_message_per_step_per_worker() -> None:
    engine = make_engine()
    worker = RecordingMailbox()
    worker.expected = 6
    for request_id in range(1, 7):  # queued before the loop starts: one prefill takes all six
        engine.transport.put(worker, Submit(GenerationRequest(request_id, (10, 11, 12), 5)))
    with running(engine):
        assert worker.done.wait(10)
    # 6 requests x 5 tokens = 30 events, in 5 messages: one per step, 6 tokens each.
    assert all(isinstance(message, StepEvents) for message in worker.messages)
    sizes = [len(message.events) for message in worker.messages]  # type: ignore[union-attr]
    assert sizes == [6, 6, 6, 6, 6]
    for message in worker.messages:
        assert sorted(e.request_id for e in message.events) == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]


def test_two_workers_get_their_own_tokens_in_order() -> None:
    async def scenario(engine: InProcessEngine) -> None:
        workers = [InProcessEngineClient(engine), InProcessEngineClient(engine)]
        requests = [
            (worker, request(worker, max_new_tokens=3 + i % 7, first=10 + 50 * i))
            for i in range(20)
            for worker in workers
        ]
        results = await asyncio.gather(*(collect(w.generate(r)) for w, r in requests))
        for (_, req), events in zip(requests, results, strict=True):
            assert_completed(events, req)
        assert len({req.request_id for _, req in requests}) == 40
        assert await workers[0].health()
        assert_idle(await workers[1].stats())
        info = await workers[0].info()
        assert (info.model_id, info.block_size, info.max_total_tokens) == ("fake", 16, 96)
        assert info.max_supported_total_tokens == 127 * 16  # block 0 is reserved

    with running(make_engine()) as engine:
        asyncio.run(scenario(engine))


async def _first(stream: AsyncIterator[RequestEvent]) -> RequestEvent:
    return await anext(stream)


async def submit_before_start(
    engine: InProcessEngine, client: InProcessEngineClient, reqs: list[GenerationRequest]
) -> list[asyncio.Task[list[RequestEvent]]]:
    """Start one consumer per request, let each submit, then start the engine thread.

    All submits are then in the engine's inbox before its first step: one prefill takes them.
    """
    tasks = [asyncio.create_task(collect(client.generate(req))) for req in reqs]
    await asyncio.sleep(0.01)
    engine.start()
    return tasks


def test_aborts_free_every_block() -> None:
    runner = ScriptedRunner(pause_before=3)  # after a prefill and two decodes
    engine = make_engine(runner)

    async def consume_two(client: InProcessEngineClient, req: GenerationRequest) -> int:
        stream = client.generate(req)
        async for event in stream:
            if event.token_id == req.prompt_ids[-1] + 2:  # type: ignore[union-attr]
                break
        await stream.aclose()  # the client went away after two tokens
        return req.request_id

    async def scenario() -> None:
        client = InProcessEngineClient(engine)
        reqs = [request(client, 80, first=10 + 100 * i) for i in range(16)]
        closing = [asyncio.create_task(consume_two(client, req)) for req in reqs[:8]]
        cancelled = [asyncio.create_task(collect(client.generate(req))) for req in reqs[8:]]
        await asyncio.sleep(0.01)
        engine.start()
        await runner.wait_paused()
        await asyncio.gather(*closing)
        for task in cancelled:
            task.cancel()  # e.g. the HTTP handler's task is cancelled on disconnect
        await asyncio.gather(*cancelled, return_exceptions=True)
        assert all(task.cancelled() for task in cancelled)
        runner.resume.set()
        # The aborts reach the engine before the stats query, in order.
        status = await client.stats()
        assert_idle(status)
        assert status.engine.num_decode_steps <= 3  # freed at once, not run to the end
        assert not runner.violations

    try:
        asyncio.run(scenario())
    finally:
        engine.stop(timeout_s=30)


def test_overloaded_requests_fail_with_tgi_message() -> None:
    settings = dataclasses.replace(SETTINGS, max_concurrent_requests=4)
    engine = make_engine(settings=settings)

    async def scenario() -> list[list[RequestEvent]]:
        client = InProcessEngineClient(engine)
        reqs = [request(client, 5) for _ in range(6)]
        return await asyncio.gather(*await submit_before_start(engine, client, reqs))

    try:
        results = asyncio.run(scenario())
    finally:
        engine.stop(timeout_s=30)
    refused = [events for events in results if isinstance(events[-1], RequestFailed)]
    assert len(refused) == 2
    for events in refused:
        assert events == [RequestFailed(events[0].request_id, FailureKind.OVERLOADED)]
    assert sum(len(events) == 5 for events in results) == 4


def test_runner_failure_fails_requests_marks_unhealthy_and_loop_goes_on() -> None:
    runner = ScriptedRunner(break_after=3)  # one prefill and two decodes succeed
    engine = make_engine(runner)

    async def scenario() -> None:
        client = InProcessEngineClient(engine)
        reqs = [request(client, 50, first=10 + 100 * i) for i in range(8)]
        tasks = await submit_before_start(engine, client, reqs)
        failures = set()
        for req, events in zip(reqs, await asyncio.gather(*tasks), strict=True):
            *tokens, failure = events
            token_ids = [event.token_id for event in tokens]  # type: ignore[union-attr]
            assert token_ids == [req.prompt_ids[-1] + i for i in (1, 2, 3)]
            assert isinstance(failure, RequestFailed)
            failures.add((failure.kind, failure.detail))
        # The decode of all eight failed at once, with TGI's 424 message.
        [(kind, detail)] = failures
        assert kind == FailureKind.GENERATION
        assert detail.startswith("scripted failure at step ")
        status = await client.stats()
        assert not status.healthy
        assert_idle(status)
        # While the device stays broken, TGI's liveness probe fails too.
        assert not await client.health()
        runner.broken.clear()
        assert await client.health()  # the probe succeeds: healthy again
        assert (await client.stats()).healthy
        req = request(client, 4)
        assert_completed(await collect(client.generate(req)), req)

    try:
        asyncio.run(scenario())
        assert engine.is_alive
    finally:
        engine.stop(timeout_s=30)


def test_a_step_that_raises_fails_everything_in_flight() -> None:
    runner = ScriptedRunner(pause_before=2)
    engine = make_engine(runner, engine_type=FaultyEngine)
    faulty = engine.loop._engine
    assert isinstance(faulty, FaultyEngine)

    async def scenario() -> None:
        client = InProcessEngineClient(engine)
        reqs = [request(client, 60) for _ in range(5)]
        tasks = await submit_before_start(engine, client, reqs)
        await runner.wait_paused()
        faulty.raise_next = True  # the step after the paused one raises
        runner.resume.set()
        for events in await asyncio.gather(*tasks):
            assert len(events) == 4  # three tokens (the paused step ends), then the failure
            assert events[-1] == RequestFailed(
                events[-1].request_id, FailureKind.GENERATION, "scheduler bug"
            )
        status = await client.stats()
        assert not status.healthy and status.num_step_failures == 1
        assert_idle(status)
        assert await client.health()  # the runner works: the liveness probe passes

    try:
        asyncio.run(scenario())
        assert engine.is_alive
    finally:
        engine.stop(timeout_s=30)


def test_stop_drains_requests_in_flight_and_refuses_new_ones() -> None:
    runner = ScriptedRunner(pause_before=2)
    engine = make_engine(runner)

    async def scenario() -> None:
        client = InProcessEngineClient(engine)
        reqs = [request(client, 60) for _ in range(4)]
        tasks = await submit_before_start(engine, client, reqs)
        await runner.wait_paused()
        engine.loop.request_stop()
        late = request(client, 5)
        late_events = asyncio.create_task(collect(client.generate(late)))
        await asyncio.sleep(0.01)
        runner.resume.set()
        assert await late_events == [RequestFailed(late.request_id, FailureKind.OVERLOADED)]
        for req, events in zip(reqs, await asyncio.gather(*tasks), strict=True):
            assert_completed(events, req)

    asyncio.run(scenario())
    engine.stop(timeout_s=30)
    assert not engine.is_alive


def test_a_drain_that_times_out_fails_what_is_left() -> None:
    runner = ScriptedRunner(pause_before=2)
    engine = Engine.create(SETTINGS, runner, eos_token_ids=(2,))
    info = describe_engine(engine, engine.warmup(), model_id="fake")
    in_process = InProcessEngine(engine, info, drain_timeout_s=0.0, idle_poll_ms=20)

    async def scenario() -> None:
        client = InProcessEngineClient(in_process)
        [req] = reqs = [request(client, 80)]
        [task] = await submit_before_start(in_process, client, reqs)
        await runner.wait_paused()
        in_process.loop.request_stop()
        runner.resume.set()
        events = await task
        assert len(events) == 4  # three tokens (the paused step ends), then the failure
        assert events[-1] == RequestFailed(
            req.request_id,
            FailureKind.GENERATION,
            "the engine shut down before the request finished",
        )

    asyncio.run(scenario())
    in_process.stop(timeout_s=30)
    assert_idle(in_process.loop.status())


@pytest.mark.parametrize("worker_closed", [True, False])
def test_a_gone_worker_or_stream_frees_its_request(worker_closed: bool) -> None:
    runner = ScriptedRunner(pause_before=2)
    engine = make_engine(runner)

    async def scenario() -> None:
        gone, alive = InProcessEngineClient(engine), InProcessEngineClient(engine)
        stream = gone.generate(request(gone, 60))
        first = asyncio.create_task(_first(stream))
        await asyncio.sleep(0.01)
        engine.start()
        await first
        await runner.wait_paused()
        if worker_closed:
            await gone.aclose()  # the worker process died: its mailbox refuses deliveries
        else:
            await stream.aclose()  # the consumer stopped: the client sends an abort
        runner.resume.set()
        while (await alive.stats()).num_in_flight:
            await asyncio.sleep(0.001)
        status = await alive.stats()
        assert_idle(status)
        assert status.engine.num_decode_steps <= 3
        await stream.aclose()

    try:
        asyncio.run(scenario())
    finally:
        engine.stop(timeout_s=30)


def test_a_request_the_engine_rejects_fails_alone() -> None:
    async def scenario(engine: InProcessEngine) -> None:
        client = InProcessEngineClient(engine)
        too_long = GenerationRequest(client.next_request_id(), tuple(range(10, 50)), 5)
        [failure] = await collect(client.generate(too_long))
        assert failure == RequestFailed(
            too_long.request_id,
            FailureKind.GENERATION,
            f"request {too_long.request_id} has 40 prompt tokens; 1..32 are allowed",
        )
        req = request(client, 5)
        assert_completed(await collect(client.generate(req)), req)
        assert_idle(await client.stats())

    with running(make_engine()) as engine:
        asyncio.run(scenario(engine))
