"""The continuous-batching scheduler: admission, step plans, and what a step's output means.

``schedule()`` returns the next ``StepPlan`` (a prefill of newly admitted sequences, or a
decode of the running batch, never both: a prefill pauses decode, as in TGI-Gaudi);
``update(plan, output)`` applies the runner's tokens, the stop criteria and the KV bookkeeping
and returns the per-request events. The scheduler knows nothing about tensors, tokenization
or time beyond the clock it is given.

Ownership: the scheduler owns every ``Sequence`` and is the only writer of its state; the
``BlockAllocator`` owns blocks and reference counts; the queue owns the waiting order; the
runner owns device state, keyed by ``request_id`` and dropped when a plan lists it as released.

KV: a sequence reserves its length plus one generation chunk (``max_generation_chunk``, TGI's
1024) when admitted and takes blocks as it grows (``KVBudget``). When a chunk is used up it
renews its reservation and keeps running without a new prefill; if the KV blocks (or
``max_batch_total_tokens``) cannot cover the next chunk, it is preempted: its blocks are freed
(full ones stay in the prefix cache), it goes back to the front of the queue with its whole
history as its prompt, and the runner is told to drop it. A sequence too long to be prefilled
again within ``max_batch_prefill_tokens`` ends with finish reason ``length`` instead, as TGI
ends a chunked generation whose re-queued prompt no longer validates.

A request the runner must ready first (``RequestPreparer``: a grammar's index) waits outside
the queue until it is ready (``Preparing``); so does a sequence about to be prefilled again
whose preparation must be redone.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf

from tgi_core.contract import (
    DecodeItem,
    FailureKind,
    GenerationRequest,
    PrefillItem,
    RequestEvent,
    RequestFailed,
    RequestPreparer,
    Shape,
    StepOutput,
    StepPlan,
    StopChecker,
    TokenEvent,
)
from tgi_core.engine_stats import SchedulerStats
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.block_allocator import BlockAllocator
from tgi_scheduler.buckets import BucketTables
from tgi_scheduler.kv_budget import KVBudget
from tgi_scheduler.limits import check_limits
from tgi_scheduler.policy import Admission, BatchLimits, concat_limits, next_batch
from tgi_scheduler.preparing import Preparing
from tgi_scheduler.queue import make_queue
from tgi_scheduler.sequence import FINISH_REASONS, Sequence, SequenceStatus
from tgi_scheduler.speculation import MAX_VERIFY_ROWS, NgramDrafter
from tgi_scheduler.stats import StepCounters, snapshot

__all__ = ["Scheduler"]

StopCheckerFactory = Callable[[GenerationRequest], StopChecker | None]

_RUNNING = SequenceStatus.RUNNING
_GENERATION = FailureKind.GENERATION


class Scheduler:
    """Decides what each engine step runs, and turns the runner's output into request events.

    Args:
        settings: limits, buckets and policies (TGI's router flags and Gaudi's bucket vars).
        allocator: the KV block pool, sized from the runner's ``num_kv_blocks``.
        eos_token_ids: the model's end-of-sequence tokens (ignored for requests with
            ``ignore_eos``, and for all with ``settings.ignore_eos_token``, TGI's benchmark mode).
        stop_checker_factory: builds a request's stop-sequence checker (None: no checker).
        clock: seconds, monotonic; used for queue times and the overdue threshold.
        preparer: the runner's ``RequestPreparer``, when it has one.

    Raises:
        ValueError: the settings cannot be served (TGI's router argument checks), or the KV
            cache cannot hold one sequence of ``max_total_tokens``.
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        allocator: BlockAllocator,
        *,
        eos_token_ids: SequenceOf[int],
        stop_checker_factory: StopCheckerFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        preparer: RequestPreparer | None = None,
    ) -> None:
        check_limits(settings, allocator)
        self._settings = settings
        self._allocator = allocator
        self._kv = KVBudget(settings, allocator)
        self._eos_token_ids = frozenset(eos_token_ids)
        self._stop_checker_factory = stop_checker_factory
        self._clock = clock
        self._tables = BucketTables(settings)
        self._queue = make_queue(settings)
        self._sequences: dict[int, Sequence] = {}  # in flight: preparing, queued or running
        self._preparing = Preparing(preparer)
        self._running: dict[int, Sequence] = {}  # in admission order
        self._released: list[int] = []  # runner state to drop with the next plan
        self._arrivals = itertools.count()
        self._step_id = 0
        self._waiting_steps = 0  # TGI's waiting_tokens: decode steps since the last prefill
        self.counters = StepCounters()

    @property
    def settings(self) -> SchedulerSettings:
        return self._settings

    @property
    def allocator(self) -> BlockAllocator:
        return self._allocator

    @property
    def num_waiting(self) -> int:
        """Requests queued or preparing."""
        return len(self._queue) + len(self._preparing)

    @property
    def preparing(self) -> Preparing:
        return self._preparing

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_unfinished(self) -> bool:
        """True while a request is in flight or runner state awaits release."""
        return bool(self._sequences or self._released)

    # --- requests in and out ------------------------------------------------------------

    def add_request(self, request: GenerationRequest) -> bool:
        """Queue a validated request; False when ``max_concurrent_requests`` are in flight.

        Raises:
            ValueError: the request id is in flight already, or the request breaks the limits
                validation enforces (empty prompt, prompt over ``max_input_tokens``,
                ``max_new_tokens`` < 1).
        """
        request_id = request.request_id
        if request_id in self._sequences:
            raise ValueError(f"request id {request_id} is already in flight")
        num_prompt_tokens = len(request.prompt_ids)
        if not 0 < num_prompt_tokens <= self._settings.max_input_tokens:
            raise ValueError(
                f"request {request_id} has {num_prompt_tokens} prompt tokens; "
                f"1..{self._settings.max_input_tokens} are allowed"
            )
        if request.max_new_tokens < 1:
            raise ValueError(f"request {request_id} asks for {request.max_new_tokens} new tokens")
        if len(self._sequences) >= self._settings.max_concurrent_requests:
            self.counters.num_requests_refused += 1
            return False
        factory = self._stop_checker_factory
        seq = Sequence(
            request,
            arrival_time=self._clock(),
            arrival_index=next(self._arrivals),
            max_total_tokens=self._settings.max_total_tokens,
            stop_checker=factory(request) if factory is not None else None,
            ignore_eos=self._settings.ignore_eos_token,
        )
        self._sequences[request_id] = seq
        if self._preparing.start(seq):
            self._queue.push(seq)
        return True

    def abort(self, request_id: int) -> bool:
        """Forget a request (its client went away): no further events, its KV blocks freed.

        A queued request is dropped before it costs anything; a running one is released to
        the runner with the next plan. False when the id is not in flight.
        """
        seq = self._sequences.get(request_id)
        if seq is None:
            return False
        if seq.status == _RUNNING:
            self._retire(seq, SequenceStatus.FINISHED_ABORTED)
        else:
            if seq.status == SequenceStatus.PREPARING:
                self._preparing.discard(seq)
            else:
                self._queue.discard(seq)
            del self._sequences[request_id]
            seq.status = SequenceStatus.FINISHED_ABORTED
        return True

    # --- planning -----------------------------------------------------------------------

    def poll_preparing(self) -> list[RequestEvent]:
        """Queue the requests whose preparation is done; fail those whose preparation failed
        (that request alone)."""
        events: list[RequestEvent] = []
        for seq, error in self._preparing.poll(self._queue):
            del self._sequences[seq.request_id]
            seq.status = SequenceStatus.FINISHED_FAILED
            events.append(RequestFailed(seq.request_id, _GENERATION, error))
        return events

    def schedule(self) -> StepPlan | None:
        """The next step: a prefill, a decode, releases only, or None when there is nothing."""
        queue = self._queue
        queue.refresh(self._clock())
        while len(queue):  # each pass parks what is not ready to prefill, or stops
            selected = self._select_prefill()
            admissions = self._preparing.keep_ready(selected)
            if admissions:
                return self._prefill_plan(admissions)
            if not selected:
                break
        if self._running:
            return self._decode_plan()
        if len(queue):
            raise RuntimeError("queued requests cannot be admitted into an empty batch")
        if self._released:
            return self._plan(None)
        return None

    def _select_prefill(self) -> list[Admission]:
        min_size, max_size, reason = concat_limits(
            len(self._running), self._waiting_steps, self._settings
        )
        if max_size <= 0:
            return []
        limits = BatchLimits(
            min_size=min_size,
            max_size=max_size,
            prefill_token_budget=self._settings.max_batch_prefill_tokens,
            token_budget=self._kv.token_headroom,
            block_budget=self._kv.block_headroom,
        )
        admissions = next_batch(self._queue, limits, self._kv.probe)
        if admissions and reason == "backpressure":
            self.counters.num_concat_backpressure += 1
        elif admissions and reason == "wait_exceeded":
            self.counters.num_concat_wait_exceeded += 1
        return admissions

    def _prefill_plan(self, admissions: list[Admission]) -> StepPlan:
        self._kv.admit(admissions)
        now = self._clock()
        items: list[PrefillItem] = []
        max_new = max_width = num_cached = 0
        for admission in admissions:
            seq = admission.seq
            seq.status = _RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
            self._running[seq.request_id] = seq
            max_new = max(max_new, admission.num_new_tokens)
            max_width = max(max_width, len(seq.block_table))
            num_cached += admission.num_cached_tokens
            items.append(self._prefill_item(seq))
        if self._allocator.prefix_caching:
            self.counters.prefix_cache_query_tokens += sum(len(i.token_ids) for i in items)
            self.counters.prefix_cache_hit_tokens += num_cached
        self.counters.num_prefill_steps += 1
        self._waiting_steps = 1
        shape = self._tables.prefill(len(items), max_new, max_width if num_cached else 0)
        return self._plan(shape, prefill=tuple(items))

    @staticmethod
    def _prefill_item(seq: Sequence) -> PrefillItem:
        return PrefillItem(
            request_id=seq.request_id,
            token_ids=tuple(seq.token_ids),
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            block_table=seq.block_table,
            sampling=seq.request.sampling,
            prompt_logprobs=seq.send_prompt_logprobs,
            images=seq.request.images,
            adapter_id=seq.request.adapter_id,
        )

    def _decode_plan(self) -> StepPlan:
        grow = self._kv.grow
        items: list[DecodeItem] = []
        append = items.append
        max_width = 0
        speculate = self._settings.speculate
        # draft tokens share the rows a step may verify (speculation.py)
        budget = MAX_VERIFY_ROWS - len(self._running) if speculate else 0
        for seq in self._running.values():
            draft = self._draft(seq, min(speculate, budget)) if budget > 0 else ()
            budget -= len(draft)
            grow(seq, len(draft))
            table = seq.block_table
            max_width = max(max_width, len(table))
            append(
                DecodeItem(
                    seq.request_id,
                    seq.token_ids[-1],
                    len(seq.token_ids) - 1,
                    table,
                    seq.request.adapter_id,
                    draft,
                )
            )
        self.counters.num_decode_steps += 1
        self._waiting_steps += 1
        return self._plan(self._tables.decode(len(items), max_width), decode=tuple(items))

    @staticmethod
    def _draft(seq: Sequence, speculate: int) -> tuple[int, ...]:
        """Up to ``speculate`` guessed tokens, within what the sequence may still generate in
        its reserved chunk (every token this step can produce stays inside it)."""
        tokens = seq.token_ids
        room = min(speculate, min(seq.reserved_tokens, seq.max_num_tokens) - len(tokens) - 1)
        if seq.proposed_draft is not None:  # the runner guesses itself (Medusa heads)
            return seq.proposed_draft[: max(room, 0)]
        if seq.drafter is None:
            seq.drafter = NgramDrafter()
        return seq.drafter.propose(tokens, room)

    def _plan(
        self,
        shape: Shape | None,
        prefill: tuple[PrefillItem, ...] = (),
        decode: tuple[DecodeItem, ...] = (),
    ) -> StepPlan:
        self._step_id += 1
        released = tuple(self._released)
        self._released.clear()
        return StepPlan(self._step_id, shape, prefill, decode, released)

    # --- outputs ------------------------------------------------------------------------

    def update(self, plan: StepPlan, output: StepOutput) -> list[RequestEvent]:
        """Apply the runner's output for ``plan``; return one event per surviving sequence.

        Sequences aborted since the plan was made are skipped. Finished sequences free their
        blocks and are released with the next plan; so do those the runner failed alone
        (``SequenceOutput.error``), each with its own error text.

        Raises:
            ValueError: the output does not answer this plan item for item.
        """
        items: SequenceOf[PrefillItem | DecodeItem] = plan.prefill or plan.decode
        outputs = output.outputs
        if output.step_id != plan.step_id or len(outputs) != len(items):
            raise ValueError(
                f"step {output.step_id} returned {len(outputs)} outputs "
                f"for step {plan.step_id} of {len(items)} sequences"
            )
        mark_computed = self._kv.mark_computed
        running = self._running
        eos_token_ids = self._eos_token_ids
        events: list[RequestEvent] = []
        for item, out in zip(items, outputs, strict=True):
            if out.request_id != item.request_id:
                raise ValueError(
                    f"output for sequence {out.request_id} where {item.request_id} was planned"
                )
            seq = running.get(out.request_id)
            if seq is None:
                continue
            if out.error is not None:
                self._retire(seq, SequenceStatus.FINISHED_FAILED)
                events.append(RequestFailed(seq.request_id, _GENERATION, out.error))
                continue
            choices = [(out.token_id, out.logprob, out.top_tokens)]
            choices += [(c.token_id, c.logprob, c.top_tokens) for c in out.extra]
            for index, (token_id, logprob, top_tokens) in enumerate(choices):
                # the KV of every token before this one exists (a speculative step computed
                # the draft tokens it accepted, which are the tokens appended before)
                mark_computed(seq)
                seq.token_ids.append(token_id)
                status = seq.stop_status(token_id, eos_token_ids)
                last = status is not None or index == len(choices) - 1
                if last and status is None and len(seq.token_ids) >= seq.reserved_tokens:
                    status = self._next_chunk(seq)
                first = len(seq.token_ids) == seq.num_prompt_tokens + 1
                events.append(
                    TokenEvent(
                        seq.request_id,
                        token_id,
                        logprob,
                        top_tokens,
                        None if status is None else FINISH_REASONS[status],
                        seq.queue_seconds if first else None,
                        out.prompt_logprobs if first and seq.send_prompt_logprobs else None,
                    )
                )
                seq.send_prompt_logprobs = False
                if status is not None:
                    self._retire(seq, status)
                    break
            seq.proposed_draft = out.draft
        return events

    def _next_chunk(self, seq: Sequence) -> SequenceStatus | None:
        """Renew the reservation of a sequence at the end of its chunk, or preempt or end it."""
        if self._kv.renew(seq):
            return None
        if len(seq.token_ids) <= self._settings.max_batch_prefill_tokens:
            self._preempt(seq)
            return None
        return SequenceStatus.FINISHED_LENGTH

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: free the KV, queue the history again at the front."""
        del self._running[seq.request_id]
        self._kv.release(seq)
        seq.status = SequenceStatus.PREEMPTED
        self._released.append(seq.request_id)
        self._queue.push_resumed(seq)
        self.counters.num_preemptions += 1

    def _retire(self, seq: Sequence, status: SequenceStatus) -> None:
        """A running sequence leaves for good (finished, aborted, failed)."""
        del self._running[seq.request_id]
        del self._sequences[seq.request_id]
        self._kv.release(seq)
        seq.status = status
        self._released.append(seq.request_id)

    def fail(self, plan: StepPlan, detail: str) -> list[RequestEvent]:
        """The runner could not execute ``plan`` (``detail``: why): fail its sequences, free
        them."""
        events: list[RequestEvent] = []
        items: list[PrefillItem | DecodeItem] = [*plan.prefill, *plan.decode]
        for item in items:
            seq = self._running.get(item.request_id)
            if seq is not None:
                self._retire(seq, SequenceStatus.FINISHED_FAILED)
                events.append(RequestFailed(seq.request_id, _GENERATION, detail))
        return events

    # --- reporting ----------------------------------------------------------------------

    def stats(self) -> SchedulerStats:
        return snapshot(
            self.counters, self._allocator, self._kv, self.num_waiting, len(self._running)
        )
