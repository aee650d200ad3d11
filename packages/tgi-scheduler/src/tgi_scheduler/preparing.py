"""Requests that wait for the runner to ready them, outside the batch: ``Preparing``.

A runner that implements ``tgi_core.contract.RequestPreparer`` does slow per-request work
(a grammar's index) off the engine thread. Until it answers ready, the request waits here:
in flight (it counts against ``max_concurrent_requests`` and can be aborted), with status
``PREPARING``, out of the admission queue and without KV blocks, while the engine goes on
stepping the others. The scheduler asks when a request arrives (``start``), at every step
for those waiting (``poll``), and again for every sequence it is about to prefill
(``keep_ready``), since a recompute after a preemption, or an index the runner evicted since,
needs the work again. A failed preparation fails that request alone.

Where a parked sequence goes back: one that never was in the queue joins it as a new
arrival; one taken out of it at admission goes back to its place (``put_back``), a preempted
one among the resumed, ahead of every new request.
"""

from __future__ import annotations

from dataclasses import dataclass

from tgi_core.contract import RequestPreparer
from tgi_scheduler.policy import Admission
from tgi_scheduler.queue import AdmissionQueue
from tgi_scheduler.sequence import Sequence, SequenceStatus

__all__ = ["Preparing"]

_PREPARING = SequenceStatus.PREPARING


@dataclass(slots=True)
class _Parked:
    seq: Sequence
    resume_status: SequenceStatus  # WAITING or PREEMPTED, once ready
    was_queued: bool  # taken out of the queue at admission: it goes back to its place
    error: str | None = None


class Preparing:
    """The sequences whose preparation is under way (see the module docstring).

    Args:
        preparer: the runner's preparation hook; None: every request is ready at once.
    """

    def __init__(self, preparer: RequestPreparer | None) -> None:
        self._preparer = preparer
        self._parked: dict[int, _Parked] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def start(self, seq: Sequence) -> bool:
        """Ask for a new sequence's preparation: True when it may be queued now; otherwise
        it is parked here (a failure too: ``poll`` reports it)."""
        if self._preparer is None:
            return True
        answer = self._preparer.prepare(seq.request)
        if answer.ready:
            return True
        self._park(seq, was_queued=False, error=answer.error)
        return False

    def keep_ready(self, admissions: list[Admission]) -> list[Admission]:
        """The admissions whose sequence is ready to prefill now; the others are parked."""
        if self._preparer is None:
            return admissions
        prepare = self._preparer.prepare
        ready: list[Admission] = []
        for admission in admissions:
            answer = prepare(admission.seq.request)
            if answer.ready:
                ready.append(admission)
            else:
                self._park(admission.seq, was_queued=True, error=answer.error)
        return ready

    def poll(self, queue: AdmissionQueue) -> list[tuple[Sequence, str]]:
        """Queue the parked sequences that are ready now; return those that failed, with
        why (no longer parked: the caller ends them)."""
        if self._preparer is None or not self._parked:
            return []
        prepare = self._preparer.prepare
        failed: list[tuple[Sequence, str]] = []
        for request_id, parked in list(self._parked.items()):
            seq = parked.seq
            error = parked.error
            if error is None:
                answer = prepare(seq.request)
                if not answer.ready and answer.error is None:
                    continue
                error = answer.error
            del self._parked[request_id]
            if error is not None:
                failed.append((seq, error))
                continue
            seq.status = parked.resume_status
            if parked.was_queued:
                queue.put_back([seq])
            else:
                queue.push(seq)
        return failed

    def discard(self, seq: Sequence) -> None:
        """Forget a parked sequence (an abort); the caller sets its final status."""
        del self._parked[seq.request_id]

    def wait(self, timeout_s: float) -> None:
        """Block until a preparation ends, or ``timeout_s``; at once when none is under way."""
        if self._preparer is not None and self._parked:
            self._preparer.wait_prepared(timeout_s)

    def _park(self, seq: Sequence, *, was_queued: bool, error: str | None) -> None:
        resume_status = seq.status if was_queued else SequenceStatus.WAITING
        self._parked[seq.request_id] = _Parked(seq, resume_status, was_queued, error)
        seq.status = _PREPARING
