"""Server-sent events: TGI's byte framing, keep-alives, and stopping on client disconnect.

Framing is axum 0.7's, which TGI emits: ``data: <compact JSON>\\n\\n`` per event, a ``:\\n\\n``
comment every 15 s of silence, ``data: [DONE]\\n\\n`` at the end of the OpenAI streams only.

``EventStream`` is the response body (Falcon's ``resp.stream``). A pump task drains the
route's event generator into a queue the body reads; a watcher task waits for the client's
``http.disconnect`` and cancels the pump at once, which closes the route's generator and,
through it, the engine client's ``generate()``, so the engine aborts the request and frees its
KV blocks without waiting for the next token. The ASGI ``receive`` callable the watcher needs
is not public in Falcon, so ``App`` (the application class) puts it into the request scope.

Non-streamed answers stop on disconnect too: ``cancel_on_disconnect`` runs a route's
responder as a task next to the same kind of watcher, and cancels it when the client leaves
before the answer, which closes the engine client's ``generate()`` the same way. Without it,
clients that send long requests and hang up would hold the engine's slots to the end.

What the events contain is each route's business (``tgi_server.resources``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import falcon.asgi

__all__ = [
    "DONE_EVENT",
    "KEEP_ALIVE",
    "KEEP_ALIVE_SECONDS",
    "RECEIVE_SCOPE_KEY",
    "App",
    "ClientDisconnectedError",
    "EventStream",
    "cancel_on_disconnect",
    "disconnect_waiter",
    "merge_streams",
    "sse_event",
    "sse_headers",
    "start_stream",
]

logger = logging.getLogger(__name__)

KEEP_ALIVE = b":\n\n"
KEEP_ALIVE_SECONDS = 15.0
DONE_EVENT = b"data: [DONE]\n\n"
RECEIVE_SCOPE_KEY = "tgi.receive"
CANCEL_SCOPE_KEY = "tgi.cancel_on_disconnect"

DisconnectWaiter = Callable[[], Awaitable[None]]
_T = TypeVar("_T")
_Resource = TypeVar("_Resource")
Responder = Callable[
    [_Resource, falcon.asgi.Request, falcon.asgi.Response], Coroutine[Any, Any, None]
]


class ClientDisconnectedError(Exception):
    """The client left before its answer; its responder was cancelled."""


def sse_event(data: bytes) -> bytes:
    """One SSE event carrying ``data`` (compact JSON, one line)."""
    return b"data: " + data + b"\n\n"


def sse_headers(compute_type: str, compute_characters: int) -> dict[str, str]:
    """The headers of every TGI stream response (content type included)."""
    return {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "x-compute-type": compute_type,
        "x-compute-characters": str(compute_characters),
        "X-Accel-Buffering": "no",
    }


def start_stream(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    events: AsyncIterator[bytes],
    headers: dict[str, str],
) -> None:
    """Answer ``req`` with HTTP 200 and the SSE ``events``, stopped if the client leaves."""
    resp.status = 200
    resp.set_headers(headers)
    resp.stream = EventStream(events, disconnect_waiter(req))


class App(falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]):
    """``falcon.asgi.App`` that exposes the ASGI ``receive`` callable to its responses.

    Falcon reads ``receive`` only while the request body is read; once the body is read,
    the next message from the server is ``http.disconnect``, which ``EventStream`` (and
    ``cancel_on_disconnect`` when ``cancel_on_disconnect`` is set) wait for through
    ``disconnect_waiter``.

    Args:
        cancel_on_disconnect: cancel non-streamed responders when their client leaves.
            Falcon's ``TestClient`` sends ``http.disconnect`` right after the body, as if
            every client hung up at once, so apps it drives leave this off.
        *args, **kwargs: ``falcon.asgi.App``'s.
    """

    def __init__(self, *args: Any, cancel_on_disconnect: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancel_on_disconnect = cancel_on_disconnect

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:  # type: ignore[override]
        if scope.get("type") == "http":
            scope = {
                **scope,
                RECEIVE_SCOPE_KEY: receive,
                CANCEL_SCOPE_KEY: self.cancel_on_disconnect,
            }
        await super().__call__(scope, receive, send)


def disconnect_waiter(req: falcon.asgi.Request) -> DisconnectWaiter | None:
    """A coroutine function that returns once the client of ``req`` has disconnected.

    Only call it after the body was read (any body message still pending is skipped).
    None when the request did not come through ``App``.
    """
    receive = req.scope.get(RECEIVE_SCOPE_KEY)
    if receive is None:
        return None

    async def wait() -> None:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return

    return wait


def cancel_on_disconnect(responder: Responder[_Resource]) -> Responder[_Resource]:
    """Decorate a POST responder: if the client disconnects first, cancel it (in an
    ``App`` built with ``cancel_on_disconnect``).

    The body must have been read already (``JsonBody`` reads it before the responder
    runs). A stream's responder returns once the stream is set up, and ``EventStream``
    watches from then on.

    Raises:
        ClientDisconnectedError: the client left before the responder finished.
    """

    @functools.wraps(responder)
    async def respond(
        resource: _Resource, req: falcon.asgi.Request, resp: falcon.asgi.Response
    ) -> None:
        await until_disconnected(req, responder(resource, req, resp))

    return respond


async def until_disconnected(req: falcon.asgi.Request, work: Coroutine[Any, Any, _T]) -> _T:
    """The result of ``work``, cancelled if the client of ``req`` disconnects first
    (only in an ``App`` built with ``cancel_on_disconnect``).

    Raises:
        ClientDisconnectedError: the client left before ``work`` finished.
    """
    wait_disconnect = disconnect_waiter(req)
    if wait_disconnect is None or not req.scope.get(CANCEL_SCOPE_KEY, False):
        return await work
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()  # no-op once done; else the client left (or we were cancelled)
        watcher.cancel()
        await asyncio.wait((task, watcher))
    if task.cancelled():
        logger.info("client disconnected: stopping its request")
        raise ClientDisconnectedError()
    return task.result()


class EventStream:
    """An async iterable response body over ``events`` (already framed SSE bytes).

    Args:
        events: the route's event generator; it is closed (cancelled) when the client
            disconnects or the body is closed, and must turn its own errors into events.
        wait_disconnect: from ``disconnect_waiter``; None: never watch.
        keep_alive_s: send ``:\\n\\n`` after this long without an event.
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        wait_disconnect: DisconnectWaiter | None,
        *,
        keep_alive_s: float = KEEP_ALIVE_SECONDS,
    ) -> None:
        self._events = events
        self._wait_disconnect = wait_disconnect
        self._keep_alive_s = keep_alive_s
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.client_left = False  # the client disconnected before the end

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        if self._pump is None:
            self._start()
        chunk = await self._queue.get()
        if chunk is None:
            await self.close()
            raise StopAsyncIteration
        return chunk

    async def close(self) -> None:
        """Stop everything (Falcon calls this when it stops reading the body)."""
        if self._timer is not None:
            self._timer.cancel()
        tasks = [task for task in (self._pump, self._watcher) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._pump = loop.create_task(self._run_pump(), name="tgi-sse-pump")
        if self._wait_disconnect is not None:
            self._watcher = loop.create_task(self._watch(), name="tgi-sse-disconnect")
        self._arm_keep_alive()

    async def _run_pump(self) -> None:
        try:
            async for chunk in self._events:
                self._queue.put_nowait(chunk)
                self._arm_keep_alive()
        except Exception:  # a route's generator must not raise; end the stream if it does
            logger.exception("an event stream failed")
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._queue.put_nowait(None)

    async def _watch(self) -> None:
        assert self._wait_disconnect is not None
        await self._wait_disconnect()
        if self._pump is not None and not self._pump.done():
            self.client_left = True
            logger.info("client disconnected: stopping its stream")
            self._pump.cancel()

    def _arm_keep_alive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._keep_alive_s, self._keep_alive)

    def _keep_alive(self) -> None:
        self._queue.put_nowait(KEEP_ALIVE)
        self._arm_keep_alive()


async def merge_streams(streams: list[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """Interleave ``streams`` in arrival order (TGI's multi-prompt completions).

    Each stream runs in its own task; closing or cancelling the merged stream cancels them
    all, which closes each stream.
    """
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def drain(stream: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in stream:
                queue.put_nowait(chunk)
        except Exception:  # as in EventStream: a failing stream ends, the others go on
            logger.exception("an event stream failed")
        finally:
            queue.put_nowait(None)

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(drain(stream)) for stream in streams]
    try:
        remaining = len(tasks)
        while remaining:
            chunk = await queue.get()
            if chunk is None:
                remaining -= 1
            else:
                yield chunk
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
