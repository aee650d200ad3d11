"""The engine step loop: a scheduler and a runner, one plan at a time.

``Engine.step()`` is the whole algorithm::

    plan = scheduler.schedule()
    output = runner.execute(plan)
    events = scheduler.update(plan, output)

plus the refusals of requests that found ``max_concurrent_requests`` in flight
(``FailureKind.OVERLOADED``, reported among the next step's events) and the failure of a
plan the runner could not run (``FailureKind.GENERATION`` for that plan's requests, the
exception's text their detail; the others carry on). A failure the runner reports
for one sequence (``SequenceOutput.error``) fails that request only. The engine is single-threaded:
call ``add_request``, ``abort`` and ``step`` from one thread (the server's engine loop).

A runner that implements ``RequestPreparer`` readies requests off this thread (a grammar's
index): each step first queues the requests that became ready (and fails those whose
preparation failed); a step with nothing to run while preparations are under way waits for
one of them, at most ``IDLE_WAIT_S``, so that an engine loop polling for messages does not spin.

Each prefill or decode step is timed (``StepTimer``, TGI's ``tgi_batch_*_duration{method}``):
``filter`` is ``schedule()``, the bookkeeping that turns the previous batch into this one
(finished sequences dropped, KV grown, queued ones admitted; TGI's ``filter_batch``), and
``concat`` that same time for a prefill that joins a running batch; ``forward`` is
``runner.execute``; ``decode`` is ``update()``, the tokens applied, stop sequences checked
(they detokenize here) and the events built, as TGI's shard decodes after its forward (the
streamed text itself is detokenized per request by the HTTP workers); ``inference`` is the
whole step. ``tgi_batch_next_size`` is the number of queued sequences each prefill admits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec

from tgi_core.contract import (
    FailureKind,
    GenerationRequest,
    ModelRunner,
    RequestEvent,
    RequestFailed,
    RequestPreparer,
    Shape,
    TokenEvent,
    WarmupProgress,
    WarmupReport,
)
from tgi_core.engine_stats import SchedulerStats
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.block_allocator import BlockAllocator
from tgi_scheduler.buckets import all_shapes
from tgi_scheduler.limits import check_limits
from tgi_scheduler.scheduler import Scheduler, StopCheckerFactory
from tgi_scheduler.stats import Method, StepTimer

__all__ = ["IDLE_WAIT_S", "Engine"]

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.02
"""The longest an idle step waits for a preparation (bounds how late a new message is read)."""


class Engine:
    """Drives a ``Scheduler`` and a ``ModelRunner`` (see the module docstring)."""

    def __init__(self, scheduler: Scheduler, runner: ModelRunner) -> None:
        if runner.block_size != scheduler.settings.block_size:
            raise ValueError(
                f"the runner's KV blocks hold {runner.block_size} tokens, "
                f"the scheduler's {scheduler.settings.block_size}"
            )
        self._scheduler = scheduler
        self._runner = runner
        self._refusals: list[RequestEvent] = []
        self._warmed: frozenset[Shape] | None = None
        self._timer = StepTimer(scheduler.settings.speculate)

    @classmethod
    def create(
        cls,
        settings: SchedulerSettings,
        runner: ModelRunner,
        *,
        eos_token_ids: Sequence[int],
        stop_checker_factory: StopCheckerFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Engine:
        """An engine over ``runner`` with a KV block pool of the runner's size (and its
        ``RequestPreparer``, when it implements one)."""
        allocator = BlockAllocator(
            runner.num_kv_blocks, runner.block_size, enable_prefix_caching=settings.prefix_caching
        )
        scheduler = Scheduler(
            settings,
            allocator,
            eos_token_ids=eos_token_ids,
            stop_checker_factory=stop_checker_factory,
            clock=clock,
            preparer=runner if isinstance(runner, RequestPreparer) else None,
        )
        return cls(scheduler, runner)

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    @property
    def runner(self) -> ModelRunner:
        return self._runner

    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request; a refusal comes back as ``RequestFailed(overloaded)`` next step."""
        if not self._scheduler.add_request(request):
            refusal = RequestFailed(request.request_id, FailureKind.OVERLOADED)
            self._refusals.append(refusal)

    def abort(self, request_id: int) -> None:
        """Drop a request whose client went away; it gets no further event."""
        if not self._scheduler.abort(request_id):
            self._refusals = [e for e in self._refusals if e.request_id != request_id]

    def has_unfinished(self) -> bool:
        return bool(self._refusals) or self._scheduler.has_unfinished()

    def step(self) -> list[RequestEvent]:
        """Run one plan; return the events of this step (tokens, finishes, failures)."""
        events, self._refusals = self._refusals, []
        events.extend(self._scheduler.poll_preparing())
        num_running = self._scheduler.num_running
        started = time.perf_counter()
        plan = self._scheduler.schedule()
        if plan is None:
            if not events:
                self._scheduler.preparing.wait(IDLE_WAIT_S)
            return events
        scheduled = time.perf_counter()
        method: Method | None = "prefill" if plan.prefill else "decode" if plan.decode else None
        if method is not None:  # a plan of releases only is no inference
            joined = method == "prefill" and num_running > 0
            self._timer.scheduled(method, len(plan.prefill), scheduled - started, joined=joined)
        if self._warmed is not None and plan.shape is not None and plan.shape not in self._warmed:
            self._scheduler.counters.num_unwarmed_shapes += 1
            logger.warning("step %d runs shape %s, which warmup did not", plan.step_id, plan.shape)
        try:
            output = self._runner.execute(plan)
        except Exception as exc:
            logger.exception("step %d failed; failing its requests", plan.step_id)
            self._scheduler.counters.num_failed_steps += 1
            if method is not None:
                self._timer.failed(method)
            events.extend(self._scheduler.fail(plan, str(exc) or type(exc).__name__))
            return events
        executed = time.perf_counter()
        step_events = self._scheduler.update(plan, output)
        if method is not None:
            updated = time.perf_counter()
            per_sequence = Counter(e.request_id for e in step_events if isinstance(e, TokenEvent))
            self._timer.succeeded(
                method,
                executed - scheduled,
                updated - executed,
                updated - started,
                per_sequence.values(),
            )
        events.extend(step_events)
        return events

    def warmup(self, progress: WarmupProgress | None = None) -> WarmupReport:
        """Run every shape of ``all_shapes(settings)`` on the runner, then adopt its KV size.

        Raises:
            ValueError: the KV capacity warmup settled on cannot hold one sequence of
                ``max_total_tokens`` (TGI's "Not enough memory to handle ...").
        """
        settings = self._scheduler.settings
        shapes = all_shapes(settings)
        report = self._runner.warmup(shapes, progress)
        allocator = self._scheduler.allocator
        if report.num_kv_blocks and report.num_kv_blocks != allocator.num_blocks:
            allocator.resize(report.num_kv_blocks)
            check_limits(settings, allocator)
        self._warmed = frozenset(shapes)
        return report

    def stats(self) -> SchedulerStats:
        """The scheduler's stats with the engine's step histograms."""
        return msgspec.structs.replace(self._scheduler.stats(), steps=self._timer.snapshot())
