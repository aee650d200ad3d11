"""Engine faults seen from a worker's ZmqEngineClient: a dead engine, a stopped one, a busy one,
and a worker that goes away with requests still queued.

The engine is a real ``tgi_scheduler.Engine`` over ``FakeRunner`` served by ``serve_engine``
in a process of its own (so that it can be killed or stopped), or by ``EngineLoop`` on a
thread. Every process started here is killed by its pid in teardown.
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

import pytest
import zmq

from tgi_core.contract import (
    FailureKind,
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
from tgi_server.engine import EngineLoop, describe_engine, wait_until_ready
from tgi_server.engine_client import HEALTH_TIMEOUT_S, EngineGoneError, ZmqEngineClient
from tgi_server.ipc import (
    RouterTransport,
    Submit,
    encode,
    heartbeat_path,
    make_socket_dir,
    new_identity,
    socket_path,
)

GONE = RequestFailed(0, FailureKind.GENERATION, "the engine process disconnected")
SETTINGS = SchedulerSettings(
    max_batch_size=8,
    max_batch_prefill_tokens=1024,
    max_input_tokens=32,
    max_total_tokens=160,
    batch_bucket_size=8,
    prefill_batch_bucket_size=4,
    pad_sequence_to_multiple_of=16,
    block_size=16,
    queue_policy="fifo",
)
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

    path, STEP_SECONDS, step_timeout_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    settings = SchedulerSettings(
        max_batch_size=8, max_batch_prefill_tokens=1024, max_input_tokens=32,
        max_total_tokens=160, batch_bucket_size=8, prefill_batch_bucket_size=4,
        pad_sequence_to_multiple_of=16, block_size=16, queue_policy="fifo",
    )
    engine = Engine.create(settings, SlowRunner(512, 16), eos_token_ids=(2,))
    info = describe_engine(engine, engine.warmup(), model_id="fake")
    serve_engine(engine, info, path, drain_timeout_s=30, step_timeout_s=step_timeout_s)
    """
)


class EngineProcess:
    """``serve_engine`` in its own process, ready when constructed."""

    def __init__(self, step_seconds: float, step_timeout_s: float) -> None:
        self.socket_dir = make_socket_dir()
        self.path = socket_path(self.socket_dir)
        command = [sys.executable, "-c", ENGINE_SCRIPT, str(self.path)]
        self.process = subprocess.Popen([*command, str(step_seconds), str(step_timeout_s)])
        wait_until_ready(self.path, is_alive=lambda: self.process.poll() is None, timeout_s=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.path.unlink(missing_ok=True)
        heartbeat_path(self.path).unlink(missing_ok=True)
        self.socket_dir.rmdir()


@pytest.fixture
def engine_process(request: pytest.FixtureRequest) -> Iterator[EngineProcess]:
    step_seconds, step_timeout_s = request.param
    process = EngineProcess(step_seconds, step_timeout_s)
    yield process
    process.stop()


def request(client: ZmqEngineClient, max_new_tokens: int = 150) -> GenerationRequest:
    return GenerationRequest(client.next_request_id(), (10, 11, 12), max_new_tokens)


async def collect(events: AsyncIterator[RequestEvent]) -> list[RequestEvent]:
    return [event async for event in events]


async def timed_health(client: ZmqEngineClient) -> tuple[bool, float]:
    started = time.monotonic()
    healthy = await client.health()
    return healthy, time.monotonic() - started


# Slack over HEALTH_TIMEOUT_S for a busy test machine; the old wait was 30 s.
HEALTH_BOUND_S = HEALTH_TIMEOUT_S + 0.5


@pytest.mark.parametrize("engine_process", [(0.01, 60.0)], indirect=True)
def test_after_the_engine_dies_every_request_fails_at_once(engine_process: EngineProcess) -> None:
    async def scenario() -> None:
        client = ZmqEngineClient(engine_process.path)
        try:
            streams = [client.generate(request(client)) for _ in range(2)]
            firsts = await asyncio.gather(*(anext(stream) for stream in streams))
            assert all(isinstance(event, TokenEvent) for event in firsts)
            os.kill(engine_process.process.pid, signal.SIGKILL)
            for stream in streams:
                events = await asyncio.wait_for(collect(stream), 5)
                assert events[-1] == RequestFailed(events[-1].request_id, GONE.kind, GONE.detail)
            late = request(client)
            failed = await asyncio.wait_for(collect(client.generate(late)), 1)
            assert failed == [RequestFailed(late.request_id, GONE.kind, GONE.detail)]
            healthy, seconds = await timed_health(client)
            assert not healthy and seconds < 0.1  # known, not asked
            with pytest.raises(EngineGoneError):
                await asyncio.wait_for(client.stats(), 1)
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("engine_process", [(0.01, 1.0)], indirect=True)
def test_a_stopped_engine_is_unhealthy_past_its_step_deadline(
    engine_process: EngineProcess,
) -> None:
    async def health_until(client: ZmqEngineClient, wanted: bool) -> None:
        deadline = time.monotonic() + 10
        while True:
            healthy, seconds = await timed_health(client)
            assert seconds < HEALTH_BOUND_S
            if healthy == wanted:
                return
            assert time.monotonic() < deadline, f"health stayed {healthy}"

    async def scenario() -> None:
        client = ZmqEngineClient(engine_process.path)
        try:
            assert await client.health()
            os.kill(engine_process.process.pid, signal.SIGSTOP)
            await health_until(client, False)
            os.kill(engine_process.process.pid, signal.SIGCONT)
            await health_until(client, True)
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("engine_process", [(2.0, 60.0)], indirect=True)
def test_health_answers_in_time_while_a_long_step_runs(engine_process: EngineProcess) -> None:
    async def scenario() -> None:
        client = ZmqEngineClient(engine_process.path)
        try:
            stream = client.generate(request(client, max_new_tokens=3))
            first = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.3)  # the prefill step (2 s) runs
            healthy, seconds = await timed_health(client)
            assert healthy and seconds < HEALTH_BOUND_S
            assert isinstance(await first, TokenEvent)
            await stream.aclose()
        finally:
            await client.aclose()

    asyncio.run(scenario())


class SlowRunner(FakeRunner):
    def __init__(self, step_seconds: float) -> None:
        super().__init__(num_kv_blocks=512, block_size=16)
        self.step_seconds = step_seconds

    def execute(self, plan: StepPlan) -> StepOutput:
        time.sleep(self.step_seconds)
        return super().execute(plan)


class ThreadEngine:
    """``EngineLoop`` on a thread over a slow FakeRunner, serving a private ROUTER socket."""

    def __init__(self, step_seconds: float) -> None:
        engine = Engine.create(SETTINGS, SlowRunner(step_seconds), eos_token_ids=(2,))
        engine.warmup()
        self.socket_dir = make_socket_dir()
        self.path = socket_path(self.socket_dir)
        self.transport = RouterTransport(self.path)
        info = describe_engine(engine, None, model_id="fake")
        self.loop = EngineLoop(engine, self.transport, info, idle_poll_ms=20)
        self.thread = threading.Thread(target=self.loop.run, name="test-engine")
        self.thread.start()

    def close(self) -> None:
        self.loop.request_stop(drain=False)
        self.thread.join(30)
        self.transport.close()
        self.socket_dir.rmdir()


def test_a_gone_worker_frees_its_queued_requests() -> None:
    engine = ThreadEngine(step_seconds=0.03)

    async def scenario() -> None:
        alive = ZmqEngineClient(engine.path, worker_index=1)
        try:
            # Eight long requests fill the batch (4.5 s of steps)...
            streams = [alive.generate(request(alive)) for _ in range(SETTINGS.max_batch_size)]
            firsts = await asyncio.gather(*(anext(stream) for stream in streams))
            assert all(isinstance(event, TokenEvent) for event in firsts)
            # ...so a second worker's requests wait in the queue when that worker dies.
            context = zmq.Context()
            dying = context.socket(zmq.DEALER)
            dying.setsockopt(zmq.IDENTITY, new_identity(2))
            dying.connect(f"ipc://{engine.path}")
            for counter in range(4):
                req = GenerationRequest((2 << 32) | counter, (10, 11, 12), 150)
                dying.send(encode(Submit(req)))
            await asyncio.sleep(0.2)
            assert (await alive.stats()).engine.queue_size == 4
            dying.close(linger=0)
            context.term()
            deadline = time.monotonic() + 3  # the engine probes quiet workers every 1 s
            while (status := await alive.stats()).num_in_flight > SETTINGS.max_batch_size:
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
            assert status.engine.queue_size == 0
            for stream in streams:
                assert isinstance((await collect(stream))[-1], TokenEvent)
        finally:
            await alive.aclose()

    try:
        asyncio.run(scenario())
    finally:
        engine.close()
