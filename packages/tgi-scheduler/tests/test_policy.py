from __future__ import annotations

from tgi_core.contract import GenerationRequest
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.policy import Admission, BatchLimits, concat_limits, next_batch
from tgi_scheduler.queue import FifoQueue
from tgi_scheduler.sequence import Sequence


def queue_of(*lengths: int) -> FifoQueue:
    queue = FifoQueue()
    for i, n in enumerate(lengths):
        request = GenerationRequest(i, tuple(range(1, n + 1)), max_new_tokens=10)
        queue.push(Sequence(request, arrival_time=0.0, arrival_index=i, max_total_tokens=1000))
    return queue


def probe(seq: Sequence) -> Admission:
    """One block per 10 tokens of prompt + 10 new tokens; no cache."""
    num_tokens = len(seq.token_ids)
    reserved = num_tokens + 10
    return Admission(seq, [], 0, num_tokens, reserved, -(-reserved // 10), -(-reserved // 10))


def limits(**overrides: int) -> BatchLimits:
    base = {
        "min_size": 0,
        "max_size": 10,
        "prefill_token_budget": 1000,
        "token_budget": 10_000,
        "block_budget": 1000,
    }
    return BatchLimits(**(base | overrides))


def taken(admissions: list[Admission]) -> list[int]:
    return [a.seq.request_id for a in admissions]


def test_concat_limits_follow_tgi() -> None:
    s = SchedulerSettings(max_batch_size=32, waiting_served_ratio=0.3, max_waiting_tokens=20)
    assert concat_limits(0, 0, s) == (0, 32, None)
    assert concat_limits(10, 5, s) == (3, 22, "backpressure")
    assert concat_limits(10, 20, s) == (0, 22, "wait_exceeded")
    assert concat_limits(32, 1, s)[1] == 0
    greedy = SchedulerSettings(max_batch_size=32, waiting_served_ratio=1.2)
    assert concat_limits(30, 1, greedy) == (36, 2, "backpressure")  # waits for max_waiting


def test_padded_prefill_budget_stops_at_the_first_misfit() -> None:
    queue = queue_of(100, 100, 300, 10)
    # (n + 1) * longest: 1*100, 2*100, then 3*300 = 900 > 800: stop, never skip ahead.
    assert taken(next_batch(queue, limits(prefill_token_budget=800), probe)) == [0, 1]
    assert len(queue) == 2
    assert taken(next_batch(queue, limits(prefill_token_budget=800), probe)) == [2, 3]


def test_max_size_token_and_block_budgets() -> None:
    assert taken(next_batch(queue_of(5, 5, 5), limits(max_size=2), probe)) == [0, 1]
    assert taken(next_batch(queue_of(5, 5, 5), limits(token_budget=30), probe)) == [0, 1]
    assert taken(next_batch(queue_of(5, 5, 5), limits(block_budget=4), probe)) == [0, 1]
    assert next_batch(queue_of(5), limits(max_size=0), probe) == []


def test_too_few_for_min_size_puts_all_back_in_order() -> None:
    queue = queue_of(5, 5, 500, 5)
    assert next_batch(queue, limits(min_size=3, prefill_token_budget=800), probe) == []
    assert len(queue) == 4
    assert next_batch(queue_of(5, 5), limits(min_size=3), probe) == []
    assert taken(next_batch(queue, limits(min_size=2, prefill_token_budget=800), probe)) == [0, 1]
