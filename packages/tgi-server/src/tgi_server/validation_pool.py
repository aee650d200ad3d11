"""The validation thread pool: tokenization and templating off the event loop."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["ValidationWorkers"]

P = ParamSpec("P")
T = TypeVar("T")


class ValidationWorkers:
    """The thread pool that tokenizes and templates (``--validation-workers`` threads).

    Created on first use and again after ``shutdown`` (an app may be started more than
    once, and from several event loops: Falcon's ``TestClient`` runs each request in its
    own), so creation and shutdown are serialized by a lock.
    """

    def __init__(self, num_workers: int) -> None:
        self.num_workers = max(1, num_workers)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the pool, awaited without blocking the event loop."""
        call = functools.partial(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.num_workers, "tgi-validation")
            future = loop.run_in_executor(self._executor, call)
        return await future

    def shutdown(self) -> None:
        """Stop the threads once the work already submitted is done."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
