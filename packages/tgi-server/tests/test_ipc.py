"""The wire messages round-trip, and the engine's ROUTER socket addresses workers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from tgi_core.contract import (
    FailureKind,
    FinishReason,
    GenerationRequest,
    RequestFailed,
    SamplingParams,
    TokenEvent,
    TopToken,
    WarmupReport,
)
from tgi_core.engine_stats import SchedulerStats
from tgi_server.ipc import (
    Abort,
    EngineInfo,
    EngineStatus,
    HealthPing,
    HealthReply,
    Hello,
    HelloReply,
    RouterTransport,
    StatsQuery,
    StatsReply,
    StepEvents,
    Submit,
    decode_engine_message,
    decode_worker_message,
    encode,
    endpoint,
    is_final_event,
    make_socket_dir,
    socket_path,
)

REQUEST = GenerationRequest(
    request_id=(7 << 32) | 1,
    prompt_ids=(1, 2, 3),
    max_new_tokens=16,
    sampling=SamplingParams(do_sample=True, temperature=0.7, top_k=5, seed=42, top_n_tokens=2),
    stop_sequences=("\n\n",),
    prompt_logprobs=True,
)
INFO = EngineInfo(
    model_id="tiny",
    pid=123,
    block_size=16,
    num_kv_blocks=64,
    max_supported_total_tokens=1024,
    max_input_tokens=255,
    max_total_tokens=256,
    max_batch_total_tokens=1024,
    max_concurrent_requests=8,
    eos_token_ids=(2,),
    warmup=WarmupReport(num_shapes=3, seconds=0.5, num_kv_blocks=64),
)


def test_worker_messages_round_trip() -> None:
    for message in (
        Submit(REQUEST),
        Abort(REQUEST.request_id),
        Hello(pid=os.getpid(), nonce=3),
        HealthPing(4),
        StatsQuery(5),
    ):
        assert decode_worker_message(encode(message)) == message


def test_engine_messages_round_trip() -> None:
    events = StepEvents(
        (
            TokenEvent(1, 42, -0.5, top_tokens=(TopToken(42, -0.5), TopToken(7, -1.5))),
            TokenEvent(2, 9, -0.1, finish_reason=FinishReason.EOS_TOKEN, queue_seconds=0.01),
            RequestFailed(3, FailureKind.OVERLOADED),
        )
    )
    counters = {name: 0 for name in SchedulerStats.__struct_fields__ if name != "steps"}
    stats = msgspec.convert({**counters, "batch_size": 2, "kv_blocks_total": 63}, SchedulerStats)
    status = EngineStatus(True, False, 2, 10, 0, engine=stats)
    for message in (
        events,
        HelloReply(3, INFO),
        HealthReply(4, False),
        StatsReply(5, status),
    ):
        assert decode_engine_message(encode(message)) == message
    decoded = decode_engine_message(encode(events))
    assert isinstance(decoded, StepEvents)
    assert decoded.events[1].finish_reason is FinishReason.EOS_TOKEN  # type: ignore[union-attr]


def test_a_worker_message_is_not_an_engine_message() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_engine_message(encode(Submit(REQUEST)))
    with pytest.raises(msgspec.DecodeError):
        decode_worker_message(b"\x93garbage")


def test_final_events() -> None:
    assert not is_final_event(TokenEvent(1, 5, 0.0))
    assert is_final_event(TokenEvent(1, 5, 0.0, finish_reason=FinishReason.LENGTH))
    assert is_final_event(RequestFailed(1, FailureKind.GENERATION, "boom"))


def test_socket_dir_is_private_and_paths_are_checked(tmp_path: Path) -> None:
    socket_dir = make_socket_dir()
    try:
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        assert socket_path(socket_dir) == socket_dir / "engine.sock"
        assert endpoint(socket_path(socket_dir)) == f"ipc://{socket_dir}/engine.sock"
    finally:
        socket_dir.rmdir()
    with pytest.raises(ValueError, match="the limit is 107"):
        endpoint(tmp_path / ("x" * 120) / "engine.sock")


@pytest.fixture
def router() -> Iterator[RouterTransport]:
    socket_dir = make_socket_dir()
    transport = RouterTransport(socket_path(socket_dir))
    try:
        yield transport
    finally:
        transport.close()
        socket_dir.rmdir()


def _dealer(
    context: zmq.Context[zmq.Socket[bytes]], path: Path, identity: bytes
) -> zmq.Socket[bytes]:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, identity)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"ipc://{path}")
    return socket


def test_router_routes_replies_to_the_worker_that_wrote(router: RouterTransport) -> None:
    context = zmq.Context()
    first = _dealer(context, router.path, b"worker-1")
    second = _dealer(context, router.path, b"worker-2")
    try:
        first.send(encode(Submit(REQUEST)))
        second.send(encode(HealthPing(9)))
        second.send(b"not msgpack of a known message")  # dropped, not fatal
        received: list[tuple[bytes, object]] = []
        while len(received) < 2:
            received += router.poll(1000)
        assert dict(received) == {b"worker-1": Submit(REQUEST), b"worker-2": HealthPing(9)}
        assert router.poll(0) == []

        assert router.send(b"worker-2", HealthReply(9, True))
        assert router.send(b"worker-1", StepEvents((TokenEvent(REQUEST.request_id, 5, 0.0),)))
        assert second.poll(1000) and decode_engine_message(second.recv()) == HealthReply(9, True)
        assert first.poll(1000)
        assert decode_engine_message(first.recv()) == StepEvents(
            (TokenEvent(REQUEST.request_id, 5, 0.0),)
        )
        # A worker the router never heard of (or one that went away) is reported, not queued.
        assert not router.send(b"worker-3", HealthReply(1, True))
    finally:
        first.close()
        second.close()
        context.term()


def test_closing_the_router_removes_its_socket_file() -> None:
    socket_dir = make_socket_dir()
    transport = RouterTransport(socket_path(socket_dir))
    assert transport.path.exists()
    transport.close()
    transport.close()  # idempotent
    assert not transport.path.exists()
    socket_dir.rmdir()
