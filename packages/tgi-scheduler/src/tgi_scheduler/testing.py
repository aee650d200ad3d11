"""A deterministic ``ModelRunner`` for tests, simulations and embedders: ``FakeRunner``.

It implements the real protocol (``tgi_core.contract.ModelRunner``) without a model: the next
token of a sequence is ``(last token + 1) % vocab_size``, or ``eos_token_id`` once a sequence
has generated the number of tokens scripted for it in ``eos_after``; a sequence scripted in
``fail_after`` reports a failure of its own (``SequenceOutput.error``) at that token
instead. It is a ``RequestPreparer`` too: a sequence scripted in ``slow_prepare`` is not
ready for its first n ``prepare`` calls, one in ``fail_prepare`` then fails its preparation.
While it runs it checks what a device runner relies on, and records every violation in
``violations`` (and raises ``PlanInvariantError`` when ``strict``):

- after warmup, every plan's shape is one warmup ran (else ``num_unwarmed_shapes`` grows);
- the shape covers the plan (batch, new tokens, block-table width; ``num_blocks`` is 0 exactly
  when no sequence reuses cached KV); a plan is a prefill or a decode, never both;
- a sequence scripted to prepare is prefilled only right after ``prepare`` said ready;
- sequences are prefilled once before they decode, released at most once, decoded with the
  token and position the runner produced, and their block tables only grow by appending;
- a decode's ``draft`` (speculative decoding) is verified: each guess the runner would
  itself have chosen next is accepted, then one token of its own follows;
- block tables cover the slots written, and no sequence writes into a block another live
  sequence's table holds;
- with ``check_kv``, a simulated KV cache (one token id per slot) proves that every cached
  prefix and every past position a step reads holds that sequence's own tokens.

``CostModel`` turns a plan into device seconds (prefill ~ padded tokens, decode ~ padded
rows), accumulated in ``elapsed_seconds``; ``FakeRunner.clock`` is a virtual clock for
simulations.
``run_until_idle`` steps an engine until it has nothing left to do.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from tgi_core.contract import (
    PREPARED,
    PREPARING,
    DecodeItem,
    DecodeShape,
    GenerationRequest,
    PrefillItem,
    PrefillShape,
    Preparation,
    RequestEvent,
    SequenceOutput,
    Shape,
    StepOutput,
    StepPlan,
    TokenChoice,
    TopToken,
    WarmupProgress,
    WarmupReport,
)

__all__ = ["CostModel", "FakeRunner", "PlanInvariantError", "run_until_idle"]


class PlanInvariantError(AssertionError):
    """A plan broke an invariant the runner relies on."""


@dataclass(frozen=True, slots=True)
class CostModel:
    """Device seconds per step: a fixed cost, plus padded prefill tokens or padded decode rows."""

    step_seconds: float = 0.004
    prefill_token_seconds: float = 5e-5
    decode_row_seconds: float = 4e-4
    decode_block_seconds: float = 0.0

    def seconds(self, shape: Shape | None) -> float:
        if shape is None:
            return 0.0
        if isinstance(shape, PrefillShape):
            return self.step_seconds + shape.batch_size * shape.seq_len * self.prefill_token_seconds
        per_row = self.decode_row_seconds + shape.num_blocks * self.decode_block_seconds
        return self.step_seconds + shape.batch_size * per_row


class _Live:
    __slots__ = ("num_prompt_tokens", "table", "token_ids", "top_n_tokens")

    def __init__(self, item: PrefillItem) -> None:
        self.token_ids = list(item.token_ids)
        self.num_prompt_tokens = item.num_prompt_tokens
        self.table = item.block_table
        self.top_n_tokens = item.sampling.top_n_tokens


class FakeRunner:
    """A deterministic ``ModelRunner`` that checks every plan (see the module docstring).

    Args:
        num_kv_blocks: KV capacity it reports.
        block_size: token slots per block.
        vocab_size: tokens wrap around at this size.
        eos_token_id: the token emitted when a script says so.
        eos_after: ``{request_id: n}``: sequence ``request_id`` emits EOS as its n-th generated
            token.
        cost_model: device time per plan, added to ``elapsed_seconds`` (None: no time).
        check_kv: simulate the KV cache and check what each step reads (costs O(context)).
        strict: raise ``PlanInvariantError`` on a violation (it is recorded either way).
        record_plans: keep every plan in ``plans``.
        fail_step_ids: steps whose ``execute`` raises ``RuntimeError`` (after releases).
        fail_after: ``{request_id: n}``: sequence ``request_id`` fails alone at its n-th generated
            token, with the error text ``f"scripted failure of sequence {request_id}"``.
        slow_prepare: ``{request_id: n}``: ``prepare`` answers "not ready" to its first n calls
            for ``request_id`` (``prepare_calls`` counts them).
        fail_prepare: sequences whose preparation then fails, with the error text
            ``f"scripted preparation failure of sequence {request_id}"``.
    """

    def __init__(
        self,
        num_kv_blocks: int = 256,
        block_size: int = 16,
        *,
        vocab_size: int = 32000,
        eos_token_id: int = 2,
        eos_after: Mapping[int, int] | None = None,
        cost_model: CostModel | None = None,
        check_kv: bool = True,
        strict: bool = True,
        record_plans: bool = True,
        fail_step_ids: Collection[int] = (),
        fail_after: Mapping[int, int] | None = None,
        slow_prepare: Mapping[int, int] | None = None,
        fail_prepare: Collection[int] = (),
    ) -> None:
        self._num_kv_blocks = num_kv_blocks
        self._block_size = block_size
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.eos_after = dict(eos_after or {})
        self.cost_model = cost_model
        self.strict = strict
        self.record_plans = record_plans
        self.fail_step_ids = set(fail_step_ids)
        self.fail_after = dict(fail_after or {})
        self.slow_prepare = dict(slow_prepare or {})
        self.fail_prepare = set(fail_prepare)
        self.prepare_calls: dict[int, int] = {}
        self._prepared: set[int] = set()  # answered ready since the last execute
        self.plans: list[StepPlan] = []
        self.violations: list[str] = []
        self.elapsed_seconds = 0.0
        self.warmed_shapes: frozenset[Shape] | None = None
        self._num_unwarmed = 0
        self._live: dict[int, _Live] = {}
        self._failed_ids: set[int] = set()
        self._holders: dict[int, set[int]] = {}  # block id -> live sequences whose table has it
        self._kv: list[int] | None = [-1] * (num_kv_blocks * block_size) if check_kv else None

    # --- ModelRunner ----------------------------------------------------------------------

    @property
    def num_kv_blocks(self) -> int:
        return self._num_kv_blocks

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_unwarmed_shapes(self) -> int:
        return self._num_unwarmed

    def warmup(
        self, shapes: Sequence[Shape], progress: WarmupProgress | None = None
    ) -> WarmupReport:
        start = time.perf_counter()
        for done, shape in enumerate(shapes, 1):
            if progress is not None:
                progress(done, len(shapes), shape)
        self.warmed_shapes = frozenset(shapes)
        seconds = time.perf_counter() - start
        return WarmupReport(len(shapes), seconds, self._num_kv_blocks, num_graphs=len(shapes))

    def execute(self, plan: StepPlan) -> StepOutput:
        if self.record_plans:
            self.plans.append(plan)
        scripted = self.slow_prepare.keys() | self.fail_prepare
        for item in plan.prefill:
            if item.request_id in scripted and item.request_id not in self._prepared:
                self._violation(f"sequence {item.request_id} prefilled before it was prepared")
        self._prepared.clear()
        for request_id in plan.released:
            self._release(request_id)
        if plan.step_id in self.fail_step_ids:
            # The scheduler will release the prefills it failed, which the runner never held.
            self._failed_ids.update(item.request_id for item in plan.prefill)
            raise RuntimeError(f"scripted failure at step {plan.step_id}")
        self._check_shape(plan)
        outputs = [self._prefill(item) for item in plan.prefill]
        outputs += [self._decode(item) for item in plan.decode]
        if self.cost_model is not None:
            self.elapsed_seconds += self.cost_model.seconds(plan.shape)
        return StepOutput(plan.step_id, tuple(outputs))

    # --- RequestPreparer -------------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Preparation:
        request_id = request.request_id
        calls = self.prepare_calls[request_id] = self.prepare_calls.get(request_id, 0) + 1
        if calls <= self.slow_prepare.get(request_id, 0):
            return PREPARING
        if request_id in self.fail_prepare:
            return Preparation(
                ready=False, error=f"scripted preparation failure of sequence {request_id}"
            )
        self._prepared.add(request_id)
        return PREPARED

    def wait_prepared(self, timeout_s: float) -> None:
        """Nothing runs in the background: the next ``prepare`` call decides."""

    def clock(self) -> float:
        """Virtual time: the device seconds of every step run so far."""
        return self.elapsed_seconds

    @property
    def live_request_ids(self) -> frozenset[int]:
        """Sequences whose state the runner holds (prefilled, not yet released)."""
        return frozenset(self._live)

    # --- checks ---------------------------------------------------------------------------

    def _violation(self, message: str) -> None:
        self.violations.append(message)
        if self.strict:
            raise PlanInvariantError(message)

    def _check_shape(self, plan: StepPlan) -> None:
        items: Sequence[PrefillItem | DecodeItem] = plan.prefill or plan.decode
        shape = plan.shape
        if plan.prefill and plan.decode:
            self._violation(f"step {plan.step_id} mixes prefill and decode")
        if (shape is None) != (not items):
            self._violation(f"step {plan.step_id}: shape {shape} for {len(items)} items")
        if shape is None:
            return
        if self.warmed_shapes is not None and shape not in self.warmed_shapes:
            self._num_unwarmed += 1
            self._violation(f"step {plan.step_id}: shape {shape} was not warmed up")
        if len({item.request_id for item in items}) != len(items):
            self._violation(f"step {plan.step_id} names a sequence twice")
        widths = [len(item.block_table) for item in items]
        if isinstance(shape, PrefillShape):
            new = max(len(i.token_ids) - i.num_cached_tokens for i in plan.prefill)
            cached = any(i.num_cached_tokens for i in plan.prefill)
            width_ok = shape.num_blocks >= max(widths) if cached else shape.num_blocks == 0
            ok = shape.batch_size >= len(items) and shape.seq_len >= new and width_ok
        else:
            ok = isinstance(shape, DecodeShape) and shape.batch_size >= len(items)
            ok = ok and shape.num_blocks >= max(widths)
        if not ok:
            self._violation(f"step {plan.step_id}: shape {shape} does not cover its items")

    def _check_table(self, request_id: int, table: tuple[int, ...], num_slots: int) -> None:
        if len(table) * self._block_size < num_slots:
            self._violation(f"sequence {request_id}: {len(table)} blocks for {num_slots} slots")
        if len(set(table)) != len(table) or not all(0 <= b < self._num_kv_blocks for b in table):
            self._violation(f"sequence {request_id}: bad block table {table}")

    def _hold(self, request_id: int, block_ids: Iterable[int]) -> None:
        for block_id in block_ids:
            self._holders.setdefault(block_id, set()).add(request_id)

    def _write(
        self, request_id: int, table: tuple[int, ...], token_ids: Sequence[int], start: int
    ) -> None:
        """Write KV for positions ``start..len(token_ids)-1``, into blocks only this seq holds."""
        size = self._block_size
        for index in range(start // size, -(-len(token_ids) // size)):
            if self._holders.get(table[index], set()) - {request_id}:
                self._violation(
                    f"sequence {request_id} writes block {table[index]}, which is shared"
                )
        kv = self._kv
        if kv is not None:
            for position in range(start, len(token_ids)):
                kv[table[position // size] * size + position % size] = token_ids[position]

    def _check_read(
        self, request_id: int, table: tuple[int, ...], token_ids: Sequence[int], end: int
    ) -> None:
        """Positions ``0..end-1`` of this table hold this sequence's own tokens."""
        kv = self._kv
        if kv is None:
            return
        size = self._block_size
        for position in range(end):
            if kv[table[position // size] * size + position % size] != token_ids[position]:
                self._violation(f"sequence {request_id} reads stale KV at position {position}")
                return

    # --- steps ----------------------------------------------------------------------------

    def _release(self, request_id: int) -> None:
        live = self._live.pop(request_id, None)
        if live is None:
            if request_id not in self._failed_ids:
                self._violation(f"release of sequence {request_id}, which the runner does not hold")
            self._failed_ids.discard(request_id)
            return
        for block_id in live.table:
            self._holders[block_id].discard(request_id)

    def _prefill(self, item: PrefillItem) -> SequenceOutput:
        request_id = item.request_id
        num_tokens = len(item.token_ids)
        if request_id in self._live:
            self._violation(f"sequence {request_id} prefilled again without a release")
            self._release(request_id)
        cached = item.num_cached_tokens
        if not 0 <= cached < num_tokens or cached % self._block_size:
            self._violation(f"sequence {request_id}: {cached} cached of {num_tokens} tokens")
        self._check_table(request_id, item.block_table, num_tokens + 1)
        self._check_read(request_id, item.block_table, item.token_ids, cached)
        self._write(request_id, item.block_table, item.token_ids, cached)
        live = self._live[request_id] = _Live(item)
        self._hold(request_id, item.block_table)
        prompt_logprobs = None
        if item.prompt_logprobs:
            prompt_logprobs = (None, *(-1.0 for _ in range(item.num_prompt_tokens - 1)))
        return self._next(request_id, live, prompt_logprobs)

    def _decode(self, item: DecodeItem) -> SequenceOutput:
        request_id = item.request_id
        live = self._live.get(request_id)
        if live is None:
            self._violation(f"sequence {request_id} decoded before its prefill")
            return SequenceOutput(request_id, 0, 0.0)
        tokens = live.token_ids
        if item.token_id != tokens[-1] or item.position != len(tokens) - 1:
            self._violation(f"sequence {request_id}: decode of {item.token_id}@{item.position}")
        table = item.block_table
        if table[: len(live.table)] != live.table:
            self._violation(
                f"sequence {request_id}: block table {table} does not extend {live.table}"
            )
        draft = item.draft
        self._check_table(request_id, table, item.position + 1 + len(draft))
        self._hold(request_id, table[len(live.table) :])
        live.table = table
        self._check_read(request_id, table, tokens, item.position)
        self._write(request_id, table, [*tokens, *draft], item.position)
        first = self._next(request_id, live, None)
        # a draft token is accepted where it is the token this runner chose there
        extra: list[TokenChoice] = []
        chosen = first
        for guess in draft:
            if chosen.error is not None or chosen.token_id != guess:
                break
            chosen = self._next(request_id, live, None)
            if chosen.error is None:
                extra.append(TokenChoice(chosen.token_id, chosen.logprob, chosen.top_tokens))
        return msgspec.structs.replace(first, extra=tuple(extra)) if extra else first

    def _next(
        self,
        request_id: int,
        live: _Live,
        prompt_logprobs: tuple[float | None, ...] | None,
    ) -> SequenceOutput:
        tokens = live.token_ids
        num_generated = len(tokens) - live.num_prompt_tokens + 1
        if self.fail_after.get(request_id) == num_generated:
            return SequenceOutput(
                request_id, 0, 0.0, error=f"scripted failure of sequence {request_id}"
            )
        if self.eos_after.get(request_id) == num_generated:
            token_id = self.eos_token_id
        else:
            token_id = (tokens[-1] + 1) % self.vocab_size
        tokens.append(token_id)
        top = tuple(
            TopToken((token_id + i) % self.vocab_size, -0.5 - i) for i in range(live.top_n_tokens)
        )
        return SequenceOutput(request_id, token_id, -0.5, top, prompt_logprobs)


class _Steppable(Protocol):
    def has_unfinished(self) -> bool: ...

    def step(self) -> list[RequestEvent]: ...


def run_until_idle(engine: _Steppable, max_steps: int = 100_000) -> dict[int, list[RequestEvent]]:
    """Step ``engine`` until it is idle; return every event, grouped by request id.

    Raises:
        RuntimeError: the engine was still busy after ``max_steps`` steps.
    """
    events: dict[int, list[RequestEvent]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return events
        for event in engine.step():
            events.setdefault(event.request_id, []).append(event)
    raise RuntimeError(f"the engine was still busy after {max_steps} steps")
