"""The engine on a thread of the current process, for tests and embedding.

``InProcessEngine`` runs the same ``EngineLoop`` as the engine process, over an in-memory
transport instead of a ZeroMQ socket: workers post messages into a thread-safe inbox, and
the loop hands each worker's replies to its ``Mailbox`` (``InProcessEngineClient`` in
``tgi_server.engine_client`` is one). Nothing is serialized on this path.
"""

from __future__ import annotations

import logging
import queue
import threading
from types import TracebackType
from typing import Protocol

from tgi_core.settings import Settings
from tgi_server.engine.build import build_engine
from tgi_server.engine.loop import EngineLike, EngineLoop
from tgi_server.ipc.messages import EngineInfo, EngineMessage, WorkerMessage

__all__ = ["InProcessEngine", "InProcessTransport", "Mailbox"]

logger = logging.getLogger(__name__)


class Mailbox(Protocol):
    """A worker's receiving end; called on the engine thread, so it must not block."""

    def deliver(self, message: EngineMessage) -> bool:
        """Take ``message``; False when this worker is closed (its requests get aborted)."""
        ...


class InProcessTransport:
    """An ``EngineTransport`` over a thread-safe queue of ``(mailbox, message)``."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[tuple[Mailbox, WorkerMessage]] = queue.SimpleQueue()

    def put(self, worker: Mailbox, message: WorkerMessage) -> None:
        """Post a worker's message to the engine (any thread)."""
        self._inbox.put((worker, message))

    def poll(self, timeout_ms: int) -> list[tuple[Mailbox, WorkerMessage]]:
        received: list[tuple[Mailbox, WorkerMessage]] = []
        try:
            if timeout_ms > 0:
                received.append(self._inbox.get(timeout=timeout_ms / 1000))
            while True:
                received.append(self._inbox.get_nowait())
        except queue.Empty:
            return received

    def send(self, worker: Mailbox, message: EngineMessage) -> bool:
        return worker.deliver(message)


class InProcessEngine:
    """Runs ``EngineLoop`` over ``engine`` on a daemon thread; a context manager.

    Args:
        engine: a ready (warmed-up) engine.
        info: what clients' ``info()`` returns.
        drain_timeout_s: how long ``stop`` lets requests in flight finish.
        idle_poll_ms: the longest the idle loop sleeps between checks for a stop.
    """

    def __init__(
        self,
        engine: EngineLike,
        info: EngineInfo,
        *,
        drain_timeout_s: float = 30.0,
        idle_poll_ms: int = 50,
    ) -> None:
        self.info = info
        self.transport = InProcessTransport()
        self.loop = EngineLoop(
            engine,
            self.transport,
            info,
            drain_timeout_s=drain_timeout_s,
            idle_poll_ms=idle_poll_ms,
        )
        self._thread = threading.Thread(target=self._run, name="tgi-engine", daemon=True)
        self._error: BaseException | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> InProcessEngine:
        """Build and warm up the engine ``settings`` describe (``build_engine``); not started."""
        ready = build_engine(settings)
        return cls(
            ready.engine,
            ready.info,
            drain_timeout_s=float(settings.graceful_termination_timeout),
        )

    def start(self) -> InProcessEngine:
        """Start the engine thread; returns self."""
        self._thread.start()
        return self

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float | None = None) -> None:
        """Drain and stop the engine thread; re-raises what killed the loop, if anything."""
        self.loop.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the engine thread did not stop within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError("the engine loop crashed") from self._error

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:
            logger.exception("the in-process engine loop crashed")
            self._error = exc

    def __enter__(self) -> InProcessEngine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
