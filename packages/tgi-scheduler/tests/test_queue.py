from __future__ import annotations

from tgi_core.contract import GenerationRequest
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.queue import AdmissionQueue, FifoQueue, PriorityQueue, make_queue
from tgi_scheduler.sequence import Sequence, SequenceStatus


def seq(request_id: int, num_tokens: int, arrival_time: float = 0.0) -> Sequence:
    request = GenerationRequest(request_id, tuple(range(1, num_tokens + 1)), max_new_tokens=4)
    return Sequence(
        request, arrival_time=arrival_time, arrival_index=request_id, max_total_tokens=100
    )


def drain(queue: AdmissionQueue) -> list[int]:
    order = []
    while (s := queue.pop()) is not None:
        order.append(s.request_id)
    return order


def test_make_queue_follows_the_policy() -> None:
    assert isinstance(make_queue(SchedulerSettings(queue_policy="fifo")), FifoQueue)
    assert isinstance(make_queue(SchedulerSettings()), PriorityQueue)


def test_fifo_is_arrival_order_and_put_back_restores_it() -> None:
    queue = FifoQueue()
    for s in (seq(0, 50), seq(1, 5), seq(2, 20)):
        queue.push(s)
    first, second = queue.pop(), queue.pop()
    assert first is not None and second is not None
    queue.put_back([first, second])
    assert len(queue) == 3
    assert drain(queue) == [0, 1, 2]
    assert len(queue) == 0


def test_priority_is_shortest_first_ties_by_arrival() -> None:
    queue = PriorityQueue(queue_threshold_ms=120)
    for s in (seq(0, 50), seq(1, 5), seq(2, 20), seq(3, 5)):
        queue.push(s)
    queue.refresh(0.05)
    assert drain(queue) == [1, 3, 2, 0]


def test_overdue_requests_go_first_and_shortest_first_among_them() -> None:
    queue = PriorityQueue(queue_threshold_ms=120)
    queue.push(seq(0, 90, arrival_time=0.0))
    queue.push(seq(1, 70, arrival_time=0.01))
    queue.push(seq(2, 3, arrival_time=0.10))
    queue.push(seq(3, 1, arrival_time=0.20))
    queue.refresh(0.135)  # 0 and 1 have waited longer than 120 ms
    assert drain(queue) == [1, 0, 3, 2]


def test_put_back_keeps_overdue_status() -> None:
    queue = PriorityQueue(queue_threshold_ms=100)
    old, young = seq(0, 90, arrival_time=0.0), seq(1, 2, arrival_time=0.5)
    queue.push(old)
    queue.push(young)
    queue.refresh(0.55)
    popped = queue.pop()
    assert popped is old
    queue.put_back([old])
    assert drain(queue) == [0, 1]


def test_preempted_sequences_are_served_first_in_order() -> None:
    for queue in (FifoQueue(), PriorityQueue(queue_threshold_ms=0)):
        queue.push(seq(0, 1))
        for request_id in (5, 6):
            preempted = seq(request_id, 80)
            preempted.status = SequenceStatus.PREEMPTED
            queue.push_resumed(preempted)
        queue.refresh(1.0)
        a, b = queue.pop(), queue.pop()
        assert a is not None and b is not None
        queue.put_back([a, b])
        assert drain(queue) == [5, 6, 0]


def test_discarded_entries_are_skipped_and_compacted() -> None:
    for queue in (FifoQueue(), PriorityQueue(queue_threshold_ms=10)):
        seqs = [seq(i, 1 + i % 7, arrival_time=i * 0.001) for i in range(300)]
        for s in seqs:
            queue.push(s)
        queue.refresh(0.1)
        for s in seqs[:250]:
            queue.discard(s)
            s.status = SequenceStatus.FINISHED_ABORTED
        assert len(queue) == 50
        assert sorted(drain(queue)) == list(range(250, 300))
