"""Property tests: random settings, arrivals, lengths, cancellations and KV budgets.

Whatever happens, every request ends exactly once (one final token or one failure, nothing
after an abort), no KV block leaks, reference counts stay >= 0, every plan's shape is one
``all_shapes`` lists, and no budget is exceeded. The fake runner checks the rest (block
tables, KV contents, decode tokens, releases) and records any violation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgi_core.contract import (
    FailureKind,
    GenerationRequest,
    PrefillShape,
    RequestEvent,
    RequestFailed,
    StepPlan,
    TokenEvent,
)
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import Engine, all_shapes
from tgi_scheduler.buckets import blocks_for
from tgi_scheduler.testing import FakeRunner


@dataclass(frozen=True)
class Add:
    num_tokens: int
    max_new_tokens: int
    family: int  # requests of one family share their prompt's prefix
    eos_after: int | None
    stop_after: int | None
    ignore_eos: bool
    prompt_logprobs: bool
    adapter_id: str | None


@dataclass(frozen=True)
class Op:
    kind: Literal["add", "abort", "step", "tick"]
    add: Add | None = None
    value: int = 0


@dataclass(frozen=True)
class Scenario:
    settings: SchedulerSettings
    num_kv_blocks: int
    ops: list[Op] = field(default_factory=list)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    max_total = draw(st.integers(4, 80))
    max_input = draw(st.integers(1, max_total - 1))
    budget = draw(st.integers(max_input, max_total + 16))
    total_budget = draw(st.none() | st.integers(max(max_total, budget), 300))
    s = SchedulerSettings(
        max_concurrent_requests=draw(st.integers(1, 12)),
        max_batch_size=draw(st.integers(1, 6)),
        max_batch_prefill_tokens=budget,
        max_batch_total_tokens=total_budget,
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        waiting_served_ratio=draw(st.sampled_from([0.0, 0.3, 1.2])),
        max_waiting_tokens=draw(st.integers(0, 6)),
        batch_bucket_size=draw(st.integers(1, 4)),
        prefill_batch_bucket_size=draw(st.integers(1, 4)),
        pad_sequence_to_multiple_of=draw(st.integers(1, 16)),
        block_size=block_size,
        queue_threshold_ms=draw(st.sampled_from([0, 5, 120])),
        queue_policy=draw(st.sampled_from(["priority", "fifo"])),
        prefix_caching=draw(st.booleans()),
        max_generation_chunk=draw(st.integers(1, 24)),
    )
    # From the fewest blocks the limits allow (preemptions galore) to a roomy cache.
    min_blocks = blocks_for(max_total, block_size) + 1
    tight = st.integers(min_blocks, min_blocks + 4)
    num_kv_blocks = draw(tight | st.integers(min_blocks, 3 * min_blocks + 8))
    adds = st.builds(
        Add,
        num_tokens=st.integers(1, max_input),
        max_new_tokens=st.integers(1, 60),
        family=st.sampled_from([0, 0, 1, 2]),
        eos_after=st.none() | st.integers(1, 60),
        stop_after=st.none() | st.integers(1, 60),
        ignore_eos=st.booleans(),
        prompt_logprobs=st.integers(0, 5).map(lambda n: n == 0),
        adapter_id=st.sampled_from([None, None, "lora"]),
    )
    add = adds.map(lambda a: Op("add", add=a))
    op = st.one_of(
        add,
        add,
        add,
        st.integers(0, 30).map(lambda i: Op("abort", value=i)),
        st.integers(1, 6).map(lambda n: Op("step", value=n)),
        st.integers(1, 6).map(lambda n: Op("step", value=n)),
        st.integers(1, 200).map(lambda ms: Op("tick", value=ms)),
    )
    return Scenario(s, num_kv_blocks, draw(st.lists(op, min_size=15, max_size=60)))


class Harness:
    """Runs a scenario and checks every step."""

    def __init__(self, scenario: Scenario) -> None:
        self.settings = scenario.settings
        self.now = 0.0
        self.runner = FakeRunner(scenario.num_kv_blocks, self.settings.block_size)
        self.stop_after: dict[int, int] = {}
        self.engine = Engine.create(
            self.settings,
            self.runner,
            eos_token_ids=[self.runner.eos_token_id],
            stop_checker_factory=self._checker,
            clock=lambda: self.now,
        )
        self.engine.warmup()
        self.shapes = set(all_shapes(self.settings))
        self.requests: dict[int, GenerationRequest] = {}
        self.events: dict[int, list[RequestEvent]] = {}
        self.ended: set[int] = set()
        self.aborted: set[int] = set()
        self.num_checked_plans = 0

    def _checker(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        limit = self.stop_after.get(request.request_id)
        if limit is None:
            return None
        fed = [0]

        def checker(token_id: int) -> bool:
            fed[0] += 1
            return fed[0] >= limit

        return checker

    def add(self, add: Add) -> None:
        request_id = len(self.requests)
        first = 1000 * (add.family + 1) + (500 if add.adapter_id else 0)
        request = GenerationRequest(
            request_id,
            tuple(range(first, first + add.num_tokens)),
            max_new_tokens=add.max_new_tokens,
            ignore_eos=add.ignore_eos,
            prompt_logprobs=add.prompt_logprobs,
            adapter_id=add.adapter_id,
        )
        if add.eos_after is not None:
            self.runner.eos_after[request_id] = add.eos_after
        if add.stop_after is not None:
            self.stop_after[request_id] = add.stop_after
        self.requests[request_id] = request
        self.engine.add_request(request)

    def abort(self, index: int) -> None:
        if self.requests:
            request_id = index % len(self.requests)
            self.aborted.add(request_id)
            self.engine.abort(request_id)

    def step(self) -> None:
        for event in self.engine.step():
            request_id = event.request_id
            assert request_id not in self.aborted, f"event after abort: {event}"
            assert request_id not in self.ended, f"event after the end: {event}"
            self.events.setdefault(request_id, []).append(event)
            if isinstance(event, RequestFailed) or event.finish_reason is not None:
                self.ended.add(request_id)
        for plan in self.runner.plans[self.num_checked_plans :]:
            self.check_plan(plan)
        self.num_checked_plans = len(self.runner.plans)
        self.check_pool()

    def check_plan(self, plan: StepPlan) -> None:
        s = self.settings
        if plan.shape is None:
            return
        assert plan.shape in self.shapes
        assert plan.num_sequences <= s.max_batch_size
        if isinstance(plan.shape, PrefillShape):
            longest = max(len(i.token_ids) - i.num_cached_tokens for i in plan.prefill)
            assert len(plan.prefill) * longest <= s.max_batch_prefill_tokens

    def check_pool(self) -> None:
        stats = self.engine.stats()
        allocator = self.engine.scheduler.allocator
        counts = [allocator.ref_count(b) for b in range(allocator.num_blocks)]
        assert min(counts) >= 0
        used = sum(1 for c in counts if c > 0)
        assert used == stats.kv_blocks_used
        assert stats.kv_blocks_used + stats.kv_blocks_free == stats.kv_blocks_total
        assert stats.kv_blocks_reserved <= stats.kv_blocks_free  # growth never runs dry
        assert stats.batch_size <= self.settings.max_batch_size
        if self.settings.max_batch_total_tokens is not None:
            assert stats.batch_current_max_tokens <= self.settings.max_batch_total_tokens
        assert stats.queue_size + stats.batch_size <= self.settings.max_concurrent_requests

    def finish(self) -> None:
        for _ in range(50_000):
            if not self.engine.has_unfinished():
                break
            self.step()
        assert not self.engine.has_unfinished()

    def check_outcome(self) -> None:
        for request_id, request in self.requests.items():
            events = self.events.get(request_id, [])
            if request_id in self.aborted and request_id not in self.ended:
                continue
            assert request_id in self.ended, f"request {request_id} never ended"
            finals = [e for e in events if isinstance(e, RequestFailed) or e.finish_reason]
            assert len(finals) == 1 and finals[0] is events[-1]
            if isinstance(events[-1], RequestFailed):
                assert events[-1].kind == FailureKind.OVERLOADED and len(events) == 1
                continue
            self.check_tokens(request, events)
        stats = self.engine.stats()
        assert stats.kv_blocks_used == 0 and stats.kv_blocks_free == stats.kv_blocks_total
        assert stats.kv_blocks_reserved == 0 and stats.batch_current_max_tokens == 0
        assert self.runner.live_request_ids == frozenset()
        assert self.runner.violations == []

    def check_tokens(self, request: GenerationRequest, events: list[RequestEvent]) -> None:
        token_events = [e for e in events if isinstance(e, TokenEvent)]
        generated = [e.token_id for e in token_events]
        assert 1 <= len(generated) <= request.max_new_tokens
        assert len(request.prompt_ids) + len(generated) <= self.settings.max_total_tokens
        # The fake runner's tokens, preemptions or not: last + 1, or EOS where scripted.
        eos_after = self.runner.eos_after.get(request.request_id)
        previous = request.prompt_ids[-1]
        for index, token_id in enumerate(generated, 1):
            expected = self.runner.eos_token_id if index == eos_after else previous + 1
            assert token_id == expected
            previous = token_id
        assert token_events[0].queue_seconds is not None
        assert all(e.queue_seconds is None for e in token_events[1:])
        assert (token_events[0].prompt_logprobs is not None) == request.prompt_logprobs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_workloads_keep_every_invariant(scenario: Scenario) -> None:
    harness = Harness(scenario)
    for op in scenario.ops:
        if op.kind == "add":
            assert op.add is not None
            harness.add(op.add)
        elif op.kind == "abort":
            harness.abort(op.value)
        elif op.kind == "tick":
            harness.now += op.value / 1000
        else:
            for _ in range(op.value):
                harness.step()
    harness.finish()
    harness.check_outcome()
