"""Admission: a worker's concurrency permits, taken before any validation work.

TGI's router tries a semaphore of ``max_concurrent_requests`` permits without waiting
before it validates a request (tokenization, grammars, images): past the limit the answer
is an immediate 429 ``Model is overloaded``, and the permit is held for the whole
generation or stream (``best_of`` N holds N, one per sequence).

Here the engine's scheduler keeps the service-wide count: it refuses a sequence beyond
``max_concurrent_requests`` in flight, over all Gunicorn workers, and that check stays.
Each worker also holds ``max_concurrent_requests`` permits of its own and takes one per
sequence before validating. No worker can hold more sequences than the whole service
admits, so a request that the engine would refuse whatever the other workers do is refused
before it costs any work, with no shared state and no round trip to the engine. A per-worker
share (the limit over the worker count) would be tighter, but connections do not spread
evenly over workers, so it would refuse requests while the engine still has room. With W
workers, up to W times the limit may be validated at once; the engine refuses the excess.
"""

from __future__ import annotations

import threading
from types import TracebackType

from tgi_core.errors import OverloadedError

__all__ = ["Permit", "Permits"]


class Permits:
    """``limit`` permits, taken without waiting (a test may drive one app from threads).

    Args:
        limit: how many sequences this worker may hold (``max_concurrent_requests``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return self._free

    def take(self, count: int = 1) -> Permit:
        """``count`` permits, to release with the returned ``Permit`` (a context manager).

        Raises:
            OverloadedError: fewer than ``count`` are free (none is taken).
        """
        self._take(count)
        return Permit(self, count)

    def _take(self, count: int) -> None:
        with self._lock:
            if count > self._free:
                raise OverloadedError()
            self._free -= count

    def _give_back(self, count: int) -> None:
        with self._lock:
            self._free += count


class Permit:
    """Permits held until ``release`` (or the end of a ``with`` block); may grow."""

    def __init__(self, permits: Permits, count: int) -> None:
        self._permits = permits
        self.count = count

    def add(self, count: int) -> None:
        """Take ``count`` more (``best_of``'s other sequences).

        Raises:
            OverloadedError: fewer than ``count`` are free (those held stay held).
        """
        if count > 0:
            self._permits._take(count)
            self.count += count

    def release(self) -> None:
        """Give every permit back; a second call does nothing."""
        count, self.count = self.count, 0
        if count:
            self._permits._give_back(count)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
