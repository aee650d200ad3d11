"""How an HTTP worker talks to the engine: the ``EngineClient`` protocol and its two forms.

``ZmqEngineClient`` (one per worker process) speaks to the engine process over the ZeroMQ
socket: one reader task per event loop receives each step's ``StepEvents`` and hands every
event to its request's asyncio queue. ``InProcessEngineClient`` talks to an
``InProcessEngine`` (the engine on a thread) through memory. Both hand out request ids that
are unique across workers, and both abort a request at once when its consumer stops early
(client disconnected, task cancelled, ``aclose``), so the engine frees its KV blocks.

A dead engine is known at once: the ZeroMQ client watches its socket's disconnect, then
ends every stream in flight and answers every later request with a ``GENERATION`` failure
(detail ``the engine process disconnected``; TGI's 424 once the HTTP layer words it)
without waiting. ``health`` answers within ``HEALTH_TIMEOUT_S``: False when the engine is
gone or hung past its step deadline (its heartbeat, ``tgi_server.ipc.heartbeat``); when it
is only busy in a long step, the last answer it gave, as TGI answers from its last known
state.

Validation, tokenization and rendering are the HTTP layer's job, not this module's.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from tgi_core.contract import FailureKind, GenerationRequest, RequestEvent, RequestFailed
from tgi_server.ipc.connection import DealerConnection
from tgi_server.ipc.heartbeat import HeartbeatReader, heartbeat_path
from tgi_server.ipc.messages import (
    Abort,
    EngineInfo,
    EngineMessage,
    EngineStatus,
    HealthPing,
    HealthReply,
    Hello,
    HelloReply,
    StatsQuery,
    StatsReply,
    StepEvents,
    Submit,
    WorkerMessage,
    encode,
    is_final_event,
)
from tgi_server.ipc.sockets import new_identity

__all__ = [
    "HEALTH_TIMEOUT_S",
    "EngineClient",
    "EngineGoneError",
    "InProcessEngineClient",
    "InProcessEngineLike",
    "ZmqEngineClient",
]

logger = logging.getLogger(__name__)

_Reply = TypeVar("_Reply", HelloReply, HealthReply, StatsReply)
_T = TypeVar("_T")
ENGINE_GONE_DETAIL = "the engine process disconnected"
# /health must answer within 1 s, whatever the engine does.
HEALTH_TIMEOUT_S = 0.5
# A request id is (tag << 32) | counter: the tag (worker index or pid, < 2**22 on Linux)
# keeps ids unique across workers, and stays below the engine's probe ids (2**62).
_COUNTER_BITS = 32
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1


class _EngineInbox(Protocol):
    def put(self, worker: InProcessEngineClient, message: WorkerMessage) -> None: ...


class InProcessEngineLike(Protocol):
    """The part of ``tgi_server.engine.InProcessEngine`` its client posts to; named here so
    that this module, which every HTTP worker imports, never imports the engine side."""

    @property
    def transport(self) -> _EngineInbox: ...


class EngineGoneError(RuntimeError):
    """The engine process is gone: nothing will answer."""


class EngineClient(Protocol):
    """What the HTTP layer needs from the engine."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestEvent, None]:
        """Submit ``request``; yield its events until the final token or a ``RequestFailed``.

        Stopping early (``aclose``, cancellation, a dropped iterator) aborts the request.
        """
        ...

    async def health(self) -> bool:
        """TGI's health check: True when the last generation succeeded or a probe does.

        Answers within ``HEALTH_TIMEOUT_S``.
        """
        ...

    async def stats(self) -> EngineStatus: ...

    async def info(self) -> EngineInfo:
        """The engine's ``EngineInfo`` (model, limits, KV capacity, warmup report)."""
        ...

    def next_request_id(self) -> int:
        """A request id no other worker of this engine will produce."""
        ...

    async def aclose(self) -> None: ...


class _Stream(NamedTuple):
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestEvent]


class _Pending(NamedTuple):
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EngineMessage]


class _ClientBase(abc.ABC):
    """Request streams and request/reply bookkeeping shared by both clients."""

    def __init__(self, reply_timeout_s: float) -> None:
        self.reply_timeout_s = reply_timeout_s
        self._counter = itertools.count(1)
        self._nonces = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self._pending: dict[int, _Pending] = {}
        self._gone: str | None = None  # why the engine is gone; it never comes back
        self._last_healthy = True

    @abc.abstractmethod
    def _tag(self) -> int:
        """The high bits of this client's request ids (unique among the engine's workers)."""

    @abc.abstractmethod
    def _prepare(self) -> None:
        """Make sure the transport is usable from the running event loop."""

    @abc.abstractmethod
    async def _send(self, message: WorkerMessage) -> None: ...

    @abc.abstractmethod
    def _send_nowait(self, message: WorkerMessage) -> None:
        """Send without awaiting (from ``finally`` blocks); never raises."""

    def next_request_id(self) -> int:
        return (self._tag() << _COUNTER_BITS) | (next(self._counter) & _COUNTER_MASK)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestEvent, None]:
        self._prepare()
        request_id = request.request_id
        if request_id in self._streams:
            raise ValueError(f"request id {request_id} is already streaming")
        if self._gone is not None:
            yield RequestFailed(request_id, FailureKind.GENERATION, self._gone)
            return
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        finished = False
        try:
            await self._send(Submit(request))
            while not finished:
                event = await stream.queue.get()
                finished = is_final_event(event)
                yield event
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send_nowait(Abort(request_id))

    async def health(self, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
        """TGI's health check; when the engine does not answer in time, see ``_busy``."""
        try:
            reply = await self._ask(HealthPing, HealthReply, timeout_s)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return self._last_healthy and self._busy()
        except EngineGoneError:
            return False
        self._last_healthy = reply.healthy
        return reply.healthy

    def _busy(self) -> bool:
        """Whether an engine that did not answer is known to be alive (in a long step)."""
        return False

    async def stats(self) -> EngineStatus:
        return (await self._ask(StatsQuery, StatsReply)).status

    async def info(self) -> EngineInfo:
        return (await self._ask(lambda nonce: Hello(os.getpid(), nonce), HelloReply)).info

    async def _ask(
        self,
        make: Callable[[int], WorkerMessage],
        reply_type: type[_Reply],
        timeout_s: float | None = None,
    ) -> _Reply:
        if self._gone is not None:
            raise EngineGoneError(self._gone)
        self._prepare()
        nonce = next(self._nonces)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EngineMessage] = loop.create_future()
        self._pending[nonce] = _Pending(loop, future)

        async def send_and_wait() -> EngineMessage:
            await self._send(make(nonce))
            return await future

        try:
            reply = await asyncio.wait_for(send_and_wait(), timeout_s or self.reply_timeout_s)
        finally:
            self._pending.pop(nonce, None)
        if not isinstance(reply, reply_type):
            raise TypeError(f"expected {reply_type.__name__}, got {type(reply).__name__}")
        return reply

    def _dispatch(self, message: EngineMessage) -> None:
        """Hand a message to its stream(s) or waiting caller; runs on their event loop."""
        if isinstance(message, StepEvents):
            self._put_events(message.events)
            return
        pending = self._pending.get(message.nonce)
        if pending is not None and not pending.future.done():
            pending.future.set_result(message)

    def _put_events(self, events: tuple[RequestEvent, ...] | list[RequestEvent]) -> None:
        for event in events:
            stream = self._streams.get(event.request_id)
            if stream is not None:  # else the consumer stopped and aborted it
                stream.queue.put_nowait(event)

    def _engine_gone(self, detail: str) -> None:
        """The engine is gone: end every stream and wait, and refuse what comes later."""
        if self._gone is None:
            logger.error("the engine is gone; failing %d request(s)", len(self._streams))
        self._gone = detail
        kind = FailureKind.GENERATION
        self._put_events([RequestFailed(request_id, kind, detail) for request_id in self._streams])
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(EngineGoneError(detail))


class ZmqEngineClient(_ClientBase):
    """An ``EngineClient`` over the engine's ZeroMQ socket; one per worker process.

    It connects lazily, from the event loop it is first used in (Gunicorn forks workers
    after the app is built), and reconnects if used from another loop or after a fork.
    If the engine goes away, the streams in flight end with ``RequestFailed(GENERATION)``,
    and so does every later request, at once.

    Args:
        socket_path: the engine socket (``ipc://`` is added).
        worker_index: the tag that makes request ids unique; defaults to the process id.
        reply_timeout_s: how long health/stats/info wait for the engine.
    """

    def __init__(
        self,
        socket_path: str | Path,
        *,
        worker_index: int | None = None,
        reply_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(reply_timeout_s)
        self.socket_path = Path(socket_path)
        self._worker_index = worker_index
        self._connection: DealerConnection | None = None
        self._heartbeat = HeartbeatReader(heartbeat_path(self.socket_path))

    def _tag(self) -> int:
        return self._worker_index if self._worker_index is not None else os.getpid()

    async def health(self, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
        if self._heartbeat.overdue() is not None:
            return False  # hung past its step deadline: the launcher is about to kill it
        return await super().health(timeout_s)

    def _busy(self) -> bool:
        # TGI answers from its last known state without asking the shards: an engine
        # whose heartbeat is within the step deadline is only busy in a long step.
        return self._heartbeat.fresh()

    async def info(self) -> EngineInfo:
        """The ``EngineInfo``; waits as long as the engine's heartbeat is fresh.

        A worker asks at its start; an engine in a long step must not fail that start (a
        worker that fails to boot stops Gunicorn).
        """
        while True:
            try:
                return await super().info()
            except asyncio.TimeoutError:
                if not self._heartbeat.fresh():
                    raise

    def _prepare(self) -> None:
        if self._connection is not None and self._connection.usable():
            return
        self._forget()
        self._connection = DealerConnection(
            self.socket_path, new_identity(self._tag()), self._dispatch, self._disconnected
        )

    def _disconnected(self) -> None:
        self._engine_gone(ENGINE_GONE_DETAIL)

    def _forget(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._streams.clear()
        self._pending.clear()

    async def _send(self, message: WorkerMessage) -> None:
        if self._connection is None:
            raise RuntimeError("not connected: _prepare() connects first")
        await self._connection.socket.send(encode(message))

    def _send_nowait(self, message: WorkerMessage) -> None:
        connection = self._connection
        if connection is not None and connection.pid == os.getpid():
            connection.send_nowait(encode(message))

    async def aclose(self) -> None:
        """Stop the reader and close the socket (requests in flight are dropped)."""
        connection, self._connection = self._connection, None
        if connection is not None and connection.usable():
            await connection.aclose()
        elif connection is not None:
            connection.close()
        self._forget()
        self._heartbeat.close()


class InProcessEngineClient(_ClientBase):
    """An ``EngineClient`` for an ``InProcessEngine``; usable from any event loop or thread.

    Each instance acts as one worker: give two instances to simulate two workers.
    """

    _tags = itertools.count(1)

    def __init__(self, engine: InProcessEngineLike, *, reply_timeout_s: float = 30.0) -> None:
        super().__init__(reply_timeout_s)
        self._engine = engine
        self._tag_value = next(InProcessEngineClient._tags)
        self._closed = False

    def _tag(self) -> int:
        return self._tag_value

    def _prepare(self) -> None:
        if self._closed:
            raise RuntimeError("this engine client is closed")

    async def _send(self, message: WorkerMessage) -> None:
        self._engine.transport.put(self, message)

    def _send_nowait(self, message: WorkerMessage) -> None:
        if not self._closed:
            self._engine.transport.put(self, message)

    def deliver(self, message: EngineMessage) -> bool:
        """Called on the engine thread: forward to the loop(s) that wait for ``message``."""
        if self._closed:
            return False
        if isinstance(message, StepEvents):
            by_loop: dict[asyncio.AbstractEventLoop, list[RequestEvent]] = {}
            for event in message.events:
                stream = self._streams.get(event.request_id)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append(event)
            for loop, events in by_loop.items():
                self._call_soon(loop, self._put_events, events)
            return True
        pending = self._pending.get(message.nonce)
        if pending is not None:
            self._call_soon(pending.loop, self._dispatch, message)
        return True

    @staticmethod
    def _call_soon(
        loop: asyncio.AbstractEventLoop, callback: Callable[[_T], None], argument: _T
    ) -> None:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(callback, argument)

    async def aclose(self) -> None:
        """Detach from the engine; the engine aborts this client's requests."""
        self._closed = True
