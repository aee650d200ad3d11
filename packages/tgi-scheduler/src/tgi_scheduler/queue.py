"""The admission queue: which waiting sequence the batching policy looks at next.

Two orders, chosen by ``SchedulerSettings.queue_policy``:

- ``"fifo"``: arrival order, as upstream TGI's router queue.
- ``"priority"``: TGI-Gaudi's ``QUEUE_THRESHOLD_MS`` queue. Shortest input first (ties in
  arrival order); a request that has waited longer than ``queue_threshold_ms`` becomes
  overdue, and overdue requests are served before all others (also shortest first).

In both, sequences put back after a preemption are served first, in the order they were put
back, whatever their length or age: they already hold a place in the running batch's history.

Entries are removed lazily: a sequence that leaves the queue by other means (an abort) keeps
its slot until it reaches the front and is skipped, so aborting costs O(1); the structures
are compacted when dead entries outnumber live ones. The queue reads a sequence's status and
length but never changes anything but the ``overdue`` flag it owns.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque

from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.sequence import Sequence, SequenceStatus

__all__ = ["AdmissionQueue", "FifoQueue", "PriorityQueue", "make_queue"]

_WAITING = SequenceStatus.WAITING
_PREEMPTED = SequenceStatus.PREEMPTED
_MIN_COMPACT = 64


class AdmissionQueue(ABC):
    """Waiting and preempted sequences, popped in the policy's order."""

    def __init__(self) -> None:
        self._resumed: deque[Sequence] = deque()
        self._num_live = 0

    def __len__(self) -> int:
        """Sequences queued (new and preempted), aborted ones excluded."""
        return self._num_live

    def push(self, seq: Sequence) -> None:
        """Queue a new (WAITING) sequence."""
        self._num_live += 1
        self._push_waiting(seq)

    def push_resumed(self, seq: Sequence) -> None:
        """Queue a PREEMPTED sequence behind the other preempted ones, before everything else."""
        self._num_live += 1
        self._resumed.append(seq)

    def pop(self) -> Sequence | None:
        """Take the next sequence in the policy's order, or None when the queue is empty."""
        resumed = self._resumed
        while resumed:
            seq = resumed.popleft()
            if seq.status == _PREEMPTED:
                self._num_live -= 1
                return seq
        waiting = self._pop_waiting()
        if waiting is not None:
            self._num_live -= 1
        return waiting

    def put_back(self, seqs: list[Sequence]) -> None:
        """Return popped sequences (in the order they were popped) to their places."""
        for seq in reversed(seqs):
            if seq.status == _PREEMPTED:
                self._resumed.appendleft(seq)
            else:
                self._put_back_waiting(seq)
        self._num_live += len(seqs)

    def discard(self, seq: Sequence) -> None:
        """Account for a queued sequence that is about to be finished elsewhere (an abort).

        The caller then sets a finished status, which makes its entry dead.
        """
        self._num_live -= 1
        if self._num_entries() > 2 * self._num_live + _MIN_COMPACT:
            self._resumed = deque(s for s in self._resumed if s.status == _PREEMPTED)
            self._compact()

    def refresh(self, now: float) -> None:  # noqa: B027 (a hook; FIFO has nothing to do)
        """Bring time-based state up to date before a scheduling decision."""

    @abstractmethod
    def _push_waiting(self, seq: Sequence) -> None: ...

    @abstractmethod
    def _put_back_waiting(self, seq: Sequence) -> None: ...

    @abstractmethod
    def _pop_waiting(self) -> Sequence | None: ...

    @abstractmethod
    def _num_entries(self) -> int: ...

    @abstractmethod
    def _compact(self) -> None: ...


class FifoQueue(AdmissionQueue):
    """Arrival order (upstream TGI)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: deque[Sequence] = deque()

    def _push_waiting(self, seq: Sequence) -> None:
        self._waiting.append(seq)

    def _put_back_waiting(self, seq: Sequence) -> None:
        self._waiting.appendleft(seq)

    def _pop_waiting(self) -> Sequence | None:
        waiting = self._waiting
        while waiting:
            seq = waiting.popleft()
            if seq.status == _WAITING:
                return seq
        return None

    def _num_entries(self) -> int:
        return len(self._resumed) + len(self._waiting)

    def _compact(self) -> None:
        self._waiting = deque(s for s in self._waiting if s.status == _WAITING)


_Entry = tuple[int, int, Sequence]  # (input length, arrival index, sequence)


class PriorityQueue(AdmissionQueue):
    """Shortest input first; overdue requests (older than the threshold) before all others."""

    def __init__(self, queue_threshold_ms: int) -> None:
        super().__init__()
        self._threshold_s = queue_threshold_ms / 1000.0
        self._regular: list[_Entry] = []
        self._overdue: list[_Entry] = []
        # Arrival order, to find the sequences turning overdue without scanning the heap.
        self._arrivals: deque[Sequence] = deque()

    def refresh(self, now: float) -> None:
        """Move the requests older than the threshold to the overdue heap."""
        cutoff = now - self._threshold_s
        arrivals = self._arrivals
        while arrivals and (arrivals[0].status != _WAITING or arrivals[0].arrival_time < cutoff):
            seq = arrivals.popleft()
            if seq.status == _WAITING and not seq.overdue:
                # Its entry in the regular heap is now dead; pop skips it.
                seq.overdue = True
                heapq.heappush(self._overdue, (len(seq.token_ids), seq.arrival_index, seq))

    def _push_waiting(self, seq: Sequence) -> None:
        self._arrivals.append(seq)
        heapq.heappush(self._regular, (len(seq.token_ids), seq.arrival_index, seq))

    def _put_back_waiting(self, seq: Sequence) -> None:
        heap = self._overdue if seq.overdue else self._regular
        heapq.heappush(heap, (len(seq.token_ids), seq.arrival_index, seq))

    def _pop_waiting(self) -> Sequence | None:
        overdue = self._overdue
        while overdue:
            seq = heapq.heappop(overdue)[2]
            if seq.status == _WAITING:
                return seq
        regular = self._regular
        while regular:
            seq = heapq.heappop(regular)[2]
            if seq.status == _WAITING and not seq.overdue:
                return seq
        return None

    def _num_entries(self) -> int:
        return len(self._resumed) + len(self._regular) + len(self._overdue)

    def _compact(self) -> None:
        self._regular = [e for e in self._regular if e[2].status == _WAITING and not e[2].overdue]
        self._overdue = [e for e in self._overdue if e[2].status == _WAITING]
        heapq.heapify(self._regular)
        heapq.heapify(self._overdue)
        self._arrivals = deque(s for s in self._arrivals if s.status == _WAITING)


def make_queue(settings: SchedulerSettings) -> AdmissionQueue:
    """The queue ``settings.queue_policy`` names."""
    if settings.queue_policy == "fifo":
        return FifoQueue()
    return PriorityQueue(settings.queue_threshold_ms)
