"""The engine process's main loop: messages in, ``engine.step()``, one message per worker out.

``EngineLoop.run`` polls its transport (blocking while idle, not at all while there is work),
applies submits and aborts, runs one ``engine.step()`` and routes the step's events: each
worker gets ONE ``StepEvents`` per step.

Failures follow TGI: when the runner raises, the engine fails that plan's requests with
``RequestFailed(FailureKind.GENERATION)`` and the loop marks the engine unhealthy; if
``engine.step()`` itself raises, the engine's state is unknown, so every request in flight
fails. Either way the loop keeps serving. While unhealthy, a health ping runs a one-token
liveness request through the engine (TGI's router does the same); any successful
generation makes the engine healthy again.
``request_stop`` starts a drain: new submits are refused, requests in flight may finish
within ``drain_timeout_s``, the rest fail, then ``run`` returns.

Every iteration calls ``heartbeat`` (the watchdog's proof of life, see
``tgi_server.ipc.heartbeat``). A worker that goes away (killed, restarted) is noticed when a
send to it fails; so that requests still waiting in the queue are freed too, a worker with
requests in flight that was sent nothing for ``_WORKER_CHECK_S`` gets an empty
``StepEvents``.

The loop never waits on a worker: the transport's sends never block. It knows nothing about
sockets (``tgi_server.ipc.sockets``, ``tgi_server.engine.inprocess``) or how the engine is
built (``tgi_server.engine.build``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from tgi_core.contract import (
    FailureKind,
    GenerationRequest,
    RequestEvent,
    RequestFailed,
    TokenEvent,
)
from tgi_core.engine_stats import SchedulerStats
from tgi_server.ipc.messages import (
    Abort,
    EngineInfo,
    EngineMessage,
    EngineStatus,
    HealthPing,
    HealthReply,
    HelloReply,
    StatsQuery,
    StatsReply,
    StepEvents,
    Submit,
    WorkerMessage,
    is_final_event,
)

__all__ = [
    "PROBE_REQUEST_ID_BASE",
    "EngineLike",
    "EngineLoop",
    "EngineTransport",
]

logger = logging.getLogger(__name__)

SHUTDOWN_DETAIL = "the engine shut down before the request finished"
# Liveness probes use ids no client produces (clients stay below 2**54).
PROBE_REQUEST_ID_BASE = 1 << 62
_PROBE_TOKEN_ID = 0
_WORKER_CHECK_S = 1.0
_GENERATION = FailureKind.GENERATION


class EngineLike(Protocol):
    """The part of ``tgi_scheduler.Engine`` the loop drives."""

    def add_request(self, request: GenerationRequest) -> None: ...

    def abort(self, request_id: int) -> None: ...

    def step(self) -> list[RequestEvent]: ...

    def has_unfinished(self) -> bool: ...

    def stats(self) -> SchedulerStats: ...


class EngineTransport(Protocol):
    """Where worker messages come from and replies go (ZeroMQ ROUTER, or in-process queues)."""

    def poll(self, timeout_ms: int) -> list[tuple[Any, WorkerMessage]]:
        """Wait up to ``timeout_ms`` for messages (0: don't wait); return all available."""
        ...

    def send(self, worker: Any, message: EngineMessage) -> bool:
        """Send without blocking; False when the worker is gone."""
        ...


class EngineLoop:
    """Serves one engine to many workers until stopped; see the module docstring.

    Args:
        engine: the engine to drive (``tgi_scheduler.Engine`` or anything like it).
        transport: where messages come from and go.
        info: what ``Hello`` is answered with.
        drain_timeout_s: how long a drain lets requests in flight finish.
        idle_poll_ms: the longest a poll blocks while idle (bounds the reaction to a stop).
        heartbeat: called once per iteration (between steps, and at least every
            ``idle_poll_ms`` while idle).
    """

    def __init__(
        self,
        engine: EngineLike,
        transport: EngineTransport,
        info: EngineInfo,
        *,
        drain_timeout_s: float = 90.0,
        idle_poll_ms: int = 100,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._transport = transport
        self._info = info
        self._drain_timeout_s = drain_timeout_s
        self._idle_poll_ms = idle_poll_ms
        self._heartbeat = heartbeat
        self._next_worker_check = 0.0
        self._last_sent: dict[Hashable, float] = {}  # worker -> when it was last sent to
        self._routes: dict[int, Hashable] = {}  # request_id -> worker that submitted it
        self._step_due = False  # a submit's refusal arrives in the next step's events
        self._healthy = True
        self._stop = threading.Event()
        self._drain_now = False
        self._num_steps = 0
        self._num_step_failures = 0
        self._probe_id: int | None = None
        self._num_probes = 0
        self._health_waiters: list[tuple[Hashable, int]] = []

    @property
    def healthy(self) -> bool:
        return self._healthy

    def request_stop(self, *, drain: bool = True) -> None:
        """Start draining (``drain=False``: stop at the next iteration, failing what runs).

        Safe from signal handlers and other threads.
        """
        if not drain:
            self._drain_now = True
        self._stop.set()

    def run(self) -> None:
        """Serve until ``request_stop`` and the drain complete."""
        drain_deadline: float | None = None
        while True:
            if self._heartbeat is not None:
                self._heartbeat()
            if drain_deadline is None and self._stop.is_set():
                drain_deadline = time.monotonic() + self._drain_timeout_s
                logger.info("draining %d request(s) in flight", len(self._routes))
            busy = self._step_due or self._engine.has_unfinished()
            if drain_deadline is not None and (
                not (busy or self._routes) or self._drain_now or time.monotonic() >= drain_deadline
            ):
                break
            for worker, message in self._transport.poll(0 if busy else self._idle_poll_ms):
                self._apply(worker, message)
            if self._step_due or self._engine.has_unfinished():
                self._step()
            self._check_workers()
        self._fail_in_flight(SHUTDOWN_DETAIL)
        logger.info("engine loop stopped after %d step(s)", self._num_steps)

    def status(self) -> EngineStatus:
        return EngineStatus(
            healthy=self._healthy,
            draining=self._stop.is_set(),
            num_in_flight=len(self._routes),
            num_steps=self._num_steps,
            num_step_failures=self._num_step_failures,
            engine=self._engine.stats(),
        )

    # --- messages -----------------------------------------------------------------------

    def _apply(self, worker: Hashable, message: WorkerMessage) -> None:
        if isinstance(message, Submit):
            self._submit(worker, message.request)
        elif isinstance(message, Abort):
            self._abort(worker, message.request_id)
        elif isinstance(message, HealthPing):
            self._health(worker, message.nonce)
        elif isinstance(message, StatsQuery):
            self._send(worker, StatsReply(message.nonce, self.status()))
        else:
            self._send(worker, HelloReply(message.nonce, self._info))

    def _submit(self, worker: Hashable, request: GenerationRequest) -> None:
        request_id = request.request_id
        if self._stop.is_set():
            self._refuse(worker, RequestFailed(request_id, FailureKind.OVERLOADED))
            return
        if request_id in self._routes or request_id >= PROBE_REQUEST_ID_BASE:
            detail = f"request id {request_id} is already in use"
            self._refuse(worker, RequestFailed(request_id, _GENERATION, detail))
            return
        try:
            self._engine.add_request(request)
        except Exception as exc:  # validation is the HTTP layer's job: a bug, not a crash
            logger.exception("the engine refused request %d", request_id)
            self._refuse(worker, RequestFailed(request_id, _GENERATION, str(exc)))
            return
        self._routes[request_id] = worker
        self._step_due = True

    def _refuse(self, worker: Hashable, failure: RequestFailed) -> None:
        self._send(worker, StepEvents((failure,)))

    def _abort(self, worker: Hashable, request_id: int) -> None:
        if self._routes.get(request_id) != worker:
            return  # finished already, or not this worker's request
        del self._routes[request_id]
        self._engine.abort(request_id)

    def _health(self, worker: Hashable, nonce: int) -> None:
        if self._stop.is_set() or self._healthy:
            self._send(worker, HealthReply(nonce, self._healthy and not self._stop.is_set()))
            return
        self._health_waiters.append((worker, nonce))
        if self._probe_id is None:
            self._num_probes += 1
            self._probe_id = PROBE_REQUEST_ID_BASE + self._num_probes
            probe = GenerationRequest(
                request_id=self._probe_id,
                prompt_ids=(_PROBE_TOKEN_ID,),
                max_new_tokens=1,
                ignore_eos=True,
            )
            self._step_due = True
            self._engine.add_request(probe)

    def _send(self, worker: Hashable, message: EngineMessage) -> None:
        if self._transport.send(worker, message):
            self._last_sent[worker] = time.monotonic()
        else:
            self._drop_worker(worker)

    def _check_workers(self) -> None:
        """Probe the quiet workers with requests in flight, every ``_WORKER_CHECK_S``."""
        now = time.monotonic()
        if now < self._next_worker_check:
            return
        self._next_worker_check = now + _WORKER_CHECK_S
        owners = set(self._routes.values())
        self._last_sent = {w: t for w, t in self._last_sent.items() if w in owners}
        for worker in owners:
            if self._last_sent.get(worker, 0.0) < now - _WORKER_CHECK_S:
                self._send(worker, StepEvents(()))

    def _drop_worker(self, worker: Hashable) -> None:
        """A worker went away: free its requests at once."""
        request_ids = [rid for rid, owner in self._routes.items() if owner == worker]
        if request_ids:
            logger.warning("worker %r is gone; aborting %d request(s)", worker, len(request_ids))
        for request_id in request_ids:
            self._abort(worker, request_id)

    # --- stepping -----------------------------------------------------------------------

    def _step(self) -> None:
        self._step_due = False
        try:
            events = self._engine.step()
        except Exception as exc:
            self._num_step_failures += 1
            self._healthy = False
            logger.exception("engine step failed; failing %d request(s)", len(self._routes))
            self._fail_in_flight(str(exc) or type(exc).__name__)
            return
        self._num_steps += 1
        self._route(events)

    def _route(self, events: list[RequestEvent]) -> None:
        """Group the step's events by worker and send each worker one message."""
        by_worker: dict[Hashable, list[RequestEvent]] = {}
        for event in events:
            request_id = event.request_id
            if request_id == self._probe_id:
                self._probe_event(event)
                continue
            self._track_health(event)
            worker = self._routes.get(request_id)
            if worker is None:
                continue  # aborted, or its worker is gone
            if is_final_event(event):
                del self._routes[request_id]
            by_worker.setdefault(worker, []).append(event)
        for worker, worker_events in by_worker.items():
            self._send(worker, StepEvents(tuple(worker_events)))

    def _track_health(self, event: RequestEvent) -> None:
        """TGI: a failed generation makes the engine unhealthy, a successful one healthy."""
        if isinstance(event, TokenEvent):
            self._healthy = True
        elif event.kind == _GENERATION:
            self._healthy = False

    def _probe_event(self, event: RequestEvent) -> None:
        self._track_health(event)
        if is_final_event(event):
            self._probe_id = None
            self._answer_health_waiters()

    def _answer_health_waiters(self) -> None:
        waiters, self._health_waiters = self._health_waiters, []
        for worker, nonce in waiters:
            self._send(worker, HealthReply(nonce, self._healthy))

    def _fail_in_flight(self, detail: str) -> None:
        """Abort every request in flight and tell each worker why (``detail``), one message
        per worker."""
        routes, self._routes = self._routes, {}
        by_worker: dict[Hashable, list[RequestEvent]] = {}
        for request_id, worker in routes.items():
            self._abort_quietly(request_id)
            by_worker.setdefault(worker, []).append(RequestFailed(request_id, _GENERATION, detail))
        if self._probe_id is not None:
            self._abort_quietly(self._probe_id)
            self._probe_id = None
            self._answer_health_waiters()
        for worker, worker_events in by_worker.items():
            self._send(worker, StepEvents(tuple(worker_events)))

    def _abort_quietly(self, request_id: int) -> None:
        try:
            self._engine.abort(request_id)
        except Exception:
            logger.exception("aborting request %d after a failed step raised", request_id)
