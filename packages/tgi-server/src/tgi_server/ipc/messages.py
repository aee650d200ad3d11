"""The wire messages between HTTP workers and the engine process, and their codec.

Workers send ``WorkerMessage``s (submit, abort, hello, health ping, stats query); the engine
answers with ``EngineMessage``s. Token traffic is batched: the engine sends each worker ONE
``StepEvents`` per engine step, carrying every event of that worker's requests in that step,
never one message per token. Everything is a tagged ``msgspec.Struct`` encoded as msgpack, so
the decoder knows the message type from its tag and a request crosses the socket as cheaply
as it crosses a function call.

Sockets and the engine loop live elsewhere (``tgi_server.ipc.sockets``,
``tgi_server.engine.loop``).
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from tgi_core.contract import GenerationRequest, RequestEvent, RequestFailed, WarmupReport
from tgi_core.engine_stats import SchedulerStats

__all__ = [
    "Abort",
    "EngineInfo",
    "EngineMessage",
    "EngineStatus",
    "HealthPing",
    "HealthReply",
    "Hello",
    "HelloReply",
    "StatsQuery",
    "StatsReply",
    "StepEvents",
    "Submit",
    "WorkerMessage",
    "decode_engine_message",
    "decode_worker_message",
    "encode",
    "is_final_event",
]


class EngineInfo(msgspec.Struct, frozen=True):
    """What the engine tells the launcher when it is ready, and any worker that says hello.

    ``max_supported_total_tokens`` is the KV capacity in tokens (``num_kv_blocks *
    block_size``), TGI's warmup answer; the router-side budget ``max_batch_total_tokens`` is
    derived from it.
    """

    model_id: str
    pid: int
    block_size: int
    num_kv_blocks: int
    max_supported_total_tokens: int
    max_input_tokens: int
    max_total_tokens: int
    max_batch_total_tokens: int
    max_concurrent_requests: int
    eos_token_ids: tuple[int, ...] = ()
    warmup: WarmupReport | None = None
    model_dtype: str = ""
    model_device_type: str = ""
    compute_path: str = ""  # the device's kernels and features (``Device.describe()``)


class EngineStatus(msgspec.Struct, frozen=True):
    """A snapshot of the engine process: health, drain state and the scheduler's stats.

    ``num_in_flight`` counts the workers' requests the loop still routes; ``num_steps`` the
    engine steps run; ``num_step_failures`` the steps that raised (the engine's own runner
    failures are in ``engine.num_failed_steps``).
    """

    healthy: bool
    draining: bool
    num_in_flight: int
    num_steps: int
    num_step_failures: int
    engine: SchedulerStats


# --- worker -> engine -----------------------------------------------------------------


class Hello(msgspec.Struct, frozen=True, tag="hello"):
    """A worker introduces itself; the engine answers ``HelloReply`` with its ``EngineInfo``."""

    pid: int
    nonce: int = 0


class Submit(msgspec.Struct, frozen=True, gc=False, tag="submit"):
    request: GenerationRequest


class Abort(msgspec.Struct, frozen=True, gc=False, tag="abort"):
    request_id: int


class HealthPing(msgspec.Struct, frozen=True, gc=False, tag="health"):
    nonce: int


class StatsQuery(msgspec.Struct, frozen=True, gc=False, tag="stats"):
    nonce: int


WorkerMessage: TypeAlias = Submit | Abort | Hello | HealthPing | StatsQuery


# --- engine -> worker -----------------------------------------------------------------


class StepEvents(msgspec.Struct, frozen=True, gc=False, tag="events"):
    """Every event of one worker's requests produced by one engine step, in order."""

    events: tuple[RequestEvent, ...]


class HelloReply(msgspec.Struct, frozen=True, tag="hello"):
    nonce: int
    info: EngineInfo


class HealthReply(msgspec.Struct, frozen=True, gc=False, tag="health"):
    nonce: int
    healthy: bool


class StatsReply(msgspec.Struct, frozen=True, tag="stats"):
    nonce: int
    status: EngineStatus


EngineMessage: TypeAlias = StepEvents | HelloReply | HealthReply | StatsReply


# --- codec ----------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_worker_decoder: msgspec.msgpack.Decoder[WorkerMessage] = msgspec.msgpack.Decoder(WorkerMessage)
_engine_decoder: msgspec.msgpack.Decoder[EngineMessage] = msgspec.msgpack.Decoder(EngineMessage)


def encode(message: WorkerMessage | EngineMessage) -> bytes:
    """Encode any wire message as msgpack (its tag travels with it)."""
    return _encoder.encode(message)


def decode_worker_message(data: bytes | memoryview) -> WorkerMessage:
    """Decode what a worker sent. Raises ``msgspec.DecodeError`` on malformed input."""
    return _worker_decoder.decode(data)


def decode_engine_message(data: bytes | memoryview) -> EngineMessage:
    """Decode what the engine sent. Raises ``msgspec.DecodeError`` on malformed input."""
    return _engine_decoder.decode(data)


def is_final_event(event: RequestEvent) -> bool:
    """True for the last event of a request: a failure, or a token with a finish reason."""
    return isinstance(event, RequestFailed) or event.finish_reason is not None
