"""ZmqEngineClient against the real engine loop over ipc://: on a thread, and in its own process.

The engine is a real ``tgi_scheduler.Engine`` over ``tgi_scheduler.testing.FakeRunner`` (whose
tokens count up from the prompt, so order is checkable). Every process started here is
stopped by its pid in teardown, and no socket file outlives its test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import zmq

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
from tgi_server.engine import (
    EngineLoop,
    EngineStartupError,
    describe_engine,
    wait_until_ready,
)
from tgi_server.engine_client import ZmqEngineClient
from tgi_server.ipc import (
    RouterTransport,
    StepEvents,
    Submit,
    decode_engine_message,
    encode,
    heartbeat_path,
    make_socket_dir,
    socket_path,
)

SETTINGS = SchedulerSettings(
    max_concurrent_requests=128,
    max_batch_size=32,
    max_batch_prefill_tokens=1024,
    max_input_tokens=32,
    max_total_tokens=160,
    batch_bucket_size=8,
    prefill_batch_bucket_size=4,
    pad_sequence_to_multiple_of=16,
    block_size=16,
    queue_policy="fifo",
)


class SlowRunner(FakeRunner):
    """A FakeRunner whose steps take ``step_seconds`` (a device that takes time)."""

    def __init__(self, step_seconds: float) -> None:
        super().__init__(num_kv_blocks=512, block_size=16)
        self.step_seconds = step_seconds

    def execute(self, plan: StepPlan) -> StepOutput:
        time.sleep(self.step_seconds)
        return super().execute(plan)


def make_engine(step_seconds: float = 0.0) -> tuple[Engine, FakeRunner]:
    runner = SlowRunner(step_seconds)
    engine = Engine.create(SETTINGS, runner, eos_token_ids=(2,))
    engine.warmup()
    return engine, runner


class ThreadEngine:
    """The engine loop on a thread, serving a ROUTER socket in a private directory."""

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.engine, self.runner = make_engine(step_seconds)
        self.socket_dir = make_socket_dir()
        self.path = socket_path(self.socket_dir)
        self.transport = RouterTransport(self.path)
        info = describe_engine(self.engine, None, model_id="fake")
        self.loop = EngineLoop(self.engine, self.transport, info, idle_poll_ms=20)
        self.thread = threading.Thread(target=self.loop.run, name="test-engine")
        self.thread.start()

    def close(self) -> None:
        self.loop.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.transport.close()
        assert not self.path.exists()
        self.socket_dir.rmdir()


@pytest.fixture
def thread_engine() -> Iterator[ThreadEngine]:
    threads_before = threading.active_count()
    engine = ThreadEngine()
    yield engine
    engine.close()
    assert threading.active_count() == threads_before


def request(client: ZmqEngineClient, max_new_tokens: int, first: int = 10) -> GenerationRequest:
    prompt_ids = (first, first + 1, first + 2)
    return GenerationRequest(client.next_request_id(), prompt_ids, max_new_tokens)


async def collect(events: AsyncIterator[RequestEvent]) -> list[RequestEvent]:
    return [event async for event in events]


def assert_completed(events: list[RequestEvent], req: GenerationRequest) -> None:
    last = req.prompt_ids[-1]
    assert [event.token_id for event in events] == list(  # type: ignore[union-attr]
        range(last + 1, last + 1 + req.max_new_tokens)
    )
    assert {event.request_id for event in events} == {req.request_id}
    finishes = [event.finish_reason for event in events]  # type: ignore[union-attr]
    assert finishes == [None] * (len(events) - 1) + [FinishReason.LENGTH]


async def run_two_workers(path: Path, num_requests: int) -> None:
    """Two workers, ``num_requests`` concurrent streams each; all complete in order."""
    workers = [ZmqEngineClient(path, worker_index=1), ZmqEngineClient(path, worker_index=2)]
    try:
        jobs = [
            (worker, request(worker, 4 + i % 9, first=10 + 200 * i))
            for i in range(num_requests)
            for worker in workers
        ]
        results = await asyncio.gather(*(collect(w.generate(r)) for w, r in jobs))
        for (_, req), events in zip(jobs, results, strict=True):
            assert_completed(events, req)
        assert len({req.request_id for _, req in jobs}) == len(jobs)
        assert await workers[0].health()
        status = await workers[1].stats()
        assert status.num_in_flight == 0
        assert status.engine.kv_blocks_free == status.engine.kv_blocks_total
    finally:
        for worker in workers:
            await worker.aclose()


def test_two_workers_stream_many_requests(thread_engine: ThreadEngine) -> None:
    asyncio.run(run_two_workers(thread_engine.path, num_requests=48))


def test_one_socket_message_per_step_per_worker(thread_engine: ThreadEngine) -> None:
    context = zmq.Context()
    worker = context.socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    try:
        worker.connect(f"ipc://{thread_engine.path}")
        for request_id in range(1, 7):
            worker.send(encode(Submit(GenerationRequest(request_id, (10, 11, 12), 5))))
        messages: list[StepEvents] = []
        while sum(len(m.events) for m in messages) < 30:
            assert worker.poll(5000), "the engine stopped answering"
            message = decode_engine_message(worker.recv())
            assert isinstance(message, StepEvents)
            messages.append(message)
    finally:
        worker.close()
        context.term()
    # 30 tokens arrived in one message per engine step, not one per token. The six submits
    # may reach the engine across two polls, so the first steps can carry fewer tokens.
    assert len(messages) <= 6
    assert max(len(m.events) for m in messages) == 6
    for message in messages:
        request_ids = [event.request_id for event in message.events]
        assert len(request_ids) == len(set(request_ids))


def test_early_stop_aborts_over_the_socket() -> None:
    engine = ThreadEngine(step_seconds=0.005)

    async def scenario() -> None:
        client = ZmqEngineClient(engine.path)
        try:
            req = request(client, 150)
            stream = client.generate(req)
            assert isinstance(await anext(stream), TokenEvent)
            await stream.aclose()
            cancelled = asyncio.create_task(collect(client.generate(request(client, 150))))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
            status = await client.stats()
            assert status.num_in_flight == 0
            assert status.engine.batch_size == status.engine.queue_size == 0
            assert status.engine.kv_blocks_free == status.engine.kv_blocks_total
            assert status.engine.num_decode_steps < 100  # both stopped long before the end
        finally:
            await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_a_client_reconnects_in_a_new_event_loop(thread_engine: ThreadEngine) -> None:
    client = ZmqEngineClient(thread_engine.path, worker_index=3)

    async def one() -> None:
        req = request(client, 3)
        assert_completed(await collect(client.generate(req)), req)

    asyncio.run(one())
    asyncio.run(one())  # Falcon's TestClient, for one, runs each request in a fresh loop
    asyncio.run(client.aclose())


def test_health_is_false_when_no_engine_answers(tmp_path: Path) -> None:
    async def scenario() -> bool:
        client = ZmqEngineClient(tmp_path / "engine.sock")
        try:
            return await client.health(timeout_s=0.2)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) is False


def test_request_ids_are_unique_per_worker() -> None:
    first, second = ZmqEngineClient("unused", worker_index=1), ZmqEngineClient("unused")
    ids = {first.next_request_id() for _ in range(1000)}
    ids |= {second.next_request_id() for _ in range(1000)}
    assert len(ids) == 2000
    assert max(ids) < 1 << 62  # below the engine's liveness-probe ids
    assert second.next_request_id() >> 32 == os.getpid()


# --- the engine in its own process -------------------------------------------------------

ENGINE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tgi_core.settings.slices import SchedulerSettings
    from tgi_scheduler import Engine
    from tgi_scheduler.testing import FakeRunner
    from tgi_server.engine import describe_engine, serve_engine

    class SlowRunner(FakeRunner):
        def execute(self, plan):
            time.sleep(STEP_SECONDS)
            return super().execute(plan)

    path, STEP_SECONDS = sys.argv[1], float(sys.argv[2])
    settings = SchedulerSettings(
        max_batch_size=32, max_batch_prefill_tokens=1024, max_input_tokens=32,
        max_total_tokens=160, batch_bucket_size=8, prefill_batch_bucket_size=4,
        pad_sequence_to_multiple_of=16, block_size=16, queue_policy="fifo",
    )
    engine = Engine.create(settings, SlowRunner(512, 16), eos_token_ids=(2,))
    info = describe_engine(engine, engine.warmup(), model_id="fake-in-a-process")
    serve_engine(engine, info, path, drain_timeout_s=30)
    """
)


class EngineProcess:
    def __init__(self, step_seconds: float) -> None:
        self.socket_dir = make_socket_dir()
        self.path = socket_path(self.socket_dir)
        self.process = subprocess.Popen(
            [sys.executable, "-c", ENGINE_SCRIPT, str(self.path), str(step_seconds)]
        )

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Teardown: whatever the test did, the process ends and its directory goes."""
        if self.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.path.unlink(missing_ok=True)
        heartbeat_path(self.path).unlink(missing_ok=True)  # left by a killed engine
        self.socket_dir.rmdir()


@pytest.fixture
def engine_process() -> Iterator[EngineProcess]:
    process = EngineProcess(step_seconds=0.002)
    yield process
    process.stop()


def test_engine_process_serves_two_workers(engine_process: EngineProcess) -> None:
    info = wait_until_ready(engine_process.path, is_alive=engine_process.is_alive, timeout_s=60)
    assert info.model_id == "fake-in-a-process"
    assert info.pid == engine_process.process.pid
    assert info.warmup is not None and info.warmup.num_shapes > 0
    assert info.num_kv_blocks == 512 and info.block_size == 16
    asyncio.run(run_two_workers(engine_process.path, num_requests=24))


def test_sigterm_drains_then_the_engine_exits(engine_process: EngineProcess) -> None:
    wait_until_ready(engine_process.path, is_alive=engine_process.is_alive, timeout_s=60)

    async def scenario() -> None:
        client = ZmqEngineClient(engine_process.path)
        try:
            reqs = [request(client, 60, first=10 + 100 * i) for i in range(6)]
            streams = [client.generate(req) for req in reqs]
            firsts = await asyncio.gather(*(anext(stream) for stream in streams))
            assert all(isinstance(event, TokenEvent) for event in firsts)
            os.kill(engine_process.process.pid, signal.SIGTERM)
            await asyncio.sleep(0.05)
            late = request(client, 5)
            assert await collect(client.generate(late)) == [
                RequestFailed(late.request_id, FailureKind.OVERLOADED)
            ]
            assert not await client.health()  # draining
            for req, first, stream in zip(reqs, firsts, streams, strict=True):
                assert_completed([first, *[event async for event in stream]], req)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert engine_process.process.wait(30) == 0
    assert not engine_process.path.exists()


def test_streams_fail_when_the_engine_process_dies(engine_process: EngineProcess) -> None:
    wait_until_ready(engine_process.path, is_alive=engine_process.is_alive, timeout_s=60)

    async def scenario() -> None:
        client = ZmqEngineClient(engine_process.path)
        try:
            reqs = [request(client, 150, first=10 + 200 * i) for i in range(3)]
            streams = [client.generate(req) for req in reqs]
            await asyncio.gather(*(anext(stream) for stream in streams))
            os.kill(engine_process.process.pid, signal.SIGKILL)
            for req, stream in zip(reqs, streams, strict=True):
                events = [event async for event in stream]
                assert events[-1] == RequestFailed(
                    req.request_id, FailureKind.GENERATION, "the engine process disconnected"
                )
                assert len(events) < 150
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert engine_process.process.wait(30) == -signal.SIGKILL


def test_waiting_for_an_engine_that_dies_fails_fast() -> None:
    socket_dir = make_socket_dir()
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        with pytest.raises(EngineStartupError):
            wait_until_ready(
                socket_path(socket_dir), is_alive=lambda: process.poll() is None, timeout_s=60
            )
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        socket_dir.rmdir()
