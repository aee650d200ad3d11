"""Grammar indexes compiled off the engine thread, with a deadline: ``IndexCompiler``.

An ``outlines_core.Index`` over a 49k-token vocabulary takes up to seconds to build (the
front end bounds how long: ``tgi_core.validation.grammar_bounds``); built inside a step, it
would stall every other sequence. ``status(regex)`` starts the compile on one background
thread (outlines_core releases the GIL while it compiles) and answers at once whether the
index is ready; the engine keeps the request out of the batch until it is
(``tgi_core.contract.RequestPreparer``).

- One compile per regex: requests with the same regex share it, and finished indexes stay in
  an LRU of ``max_cached_indexes``.
- A compile still running ``deadline_s`` after it started fails its regex with "grammar is too
  complex: ...". It cannot be interrupted: its thread is abandoned (it exits when the compile
  returns) and a new one takes the queue. Failures are remembered, so the same regex fails at
  once next time instead of taking another thread.
- An index answered ready stays reserved until ``end_step``, so that no eviction can drop it
  between that answer and the prefill that uses it.

Everything but the compile itself runs on the engine thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from outlines_core import Index, Vocabulary

from tgi_core.contract import PREPARED, PREPARING, Preparation

__all__ = ["COMPILE_DEADLINE_S", "IndexCompiler"]

COMPILE_DEADLINE_S = 10.0
"""How long one index may compile: ten times what the front end's bounds allow for."""

_MAX_FAILED = 256  # remembered failures


class _Task:
    """One regex's compile; written by the compile thread, read once ``finished``."""

    __slots__ = ("error", "finished", "index", "regex", "started_at", "stop")

    def __init__(self, regex: str) -> None:
        self.regex = regex
        self.index: Any = None
        self.error: str | None = None
        self.stop: threading.Event | None = None  # the thread running it
        self.started_at: float | None = None
        self.finished = False


class IndexCompiler:
    """The compiled indexes of one vocabulary (see the module docstring).

    Args:
        vocabulary: the tokens every index is built over.
        max_cached_indexes: finished indexes kept (the same JSON schema comes back request
            after request).
        deadline_s: the longest one compile may run.
        clock: seconds, monotonic.
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        *,
        max_cached_indexes: int,
        deadline_s: float = COMPILE_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._vocabulary = vocabulary
        self._max_cached = max_cached_indexes
        self._deadline_s = deadline_s
        self._clock = clock
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._reserved: dict[str, Any] = {}
        self._failed: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, _Task] = {}
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._stop: threading.Event | None = None  # the current compile thread's
        self._finished = threading.Event()  # set by the compile thread after each task
        self.num_compiles = 0  # indexes built, on either thread

    def status(self, regex: str) -> Preparation:
        """Whether ``regex``'s index is ready; starts its compile when nothing else did."""
        if self._pending:
            self._collect()
        index = self._lookup(regex)
        if index is not None:
            self._reserved[regex] = index
            return PREPARED
        error = self._failed.get(regex)
        if error is not None:
            return Preparation(ready=False, error=error)
        if regex not in self._pending:
            self._start(regex)
        return PREPARING

    def get(self, regex: str) -> Any:
        """``regex``'s index: prepared, cached, or else compiled here and now (a runner used
        without ``status`` first).

        Raises:
            ValueError: the regex does not compile, or its compile failed before.
        """
        if self._pending:
            self._collect()
        index = self._lookup(regex)
        if index is not None:
            return index
        error = self._failed.get(regex)
        if error is None:
            self.num_compiles += 1
            index, error = self._compile(regex)
            if error is None:
                self._store(regex, index)
                return index
            self._fail(regex, error)
        raise ValueError(error)

    def end_step(self) -> None:
        """Drop the reservations of indexes answered ready (their prefills have run)."""
        self._reserved.clear()

    def wait(self, timeout_s: float) -> None:
        """Block until a compile finishes, or ``timeout_s``; at once when none is under way."""
        self._finished.clear()
        if not self._pending or any(task.finished for task in self._pending.values()):
            return
        self._finished.wait(timeout_s)

    def close(self) -> None:
        """Stop the compile thread (after its current compile); the compiler is done."""
        if self._stop is not None:
            self._stop.set()
            self._tasks.put(None)
            self._stop = None

    # -- internals --------------------------------------------------------------------

    def _lookup(self, regex: str) -> Any:
        index = self._reserved.get(regex)
        if index is None:
            index = self._cache.get(regex)
            if index is not None:
                self._cache.move_to_end(regex)
        return index

    def _store(self, regex: str, index: Any) -> None:
        self._cache[regex] = index
        if len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)

    def _fail(self, regex: str, error: str) -> None:
        self._failed[regex] = error
        if len(self._failed) > _MAX_FAILED:
            self._failed.popitem(last=False)

    def _collect(self) -> None:
        """Take the finished compiles in, and fail those past the deadline."""
        now = self._clock()
        for regex, task in list(self._pending.items()):
            if task.finished:
                del self._pending[regex]
                if task.error is None:
                    self._store(regex, task.index)
                else:
                    self._fail(regex, task.error)
            elif task.started_at is not None and now - task.started_at > self._deadline_s:
                del self._pending[regex]
                self._abandon(task)
                deadline = f"{self._deadline_s:g} s"
                self._fail(regex, f"grammar is too complex: its index took over {deadline}")

    def _start(self, regex: str) -> None:
        self.num_compiles += 1
        task = self._pending[regex] = _Task(regex)
        if self._stop is None:
            self._start_thread()
        self._tasks.put(task)

    def _start_thread(self) -> None:
        stop = self._stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(stop,), name="grammar-compile", daemon=True
        )
        thread.start()

    def _abandon(self, task: _Task) -> None:
        if task.stop is not None:
            task.stop.set()
            if task.stop is self._stop:  # the queue needs a thread that is not stuck
                self._start_thread()

    def _compile(self, regex: str) -> tuple[Any, str | None]:
        try:
            return Index(regex, self._vocabulary), None
        except (ValueError, RuntimeError) as exc:
            return None, f"grammar is not valid: {exc}"
        except Exception as exc:
            return None, f"grammar could not be compiled: {exc}"

    def _run(self, stop: threading.Event) -> None:
        tasks = self._tasks
        while not stop.is_set():
            task = tasks.get()
            if task is None:
                return
            if stop.is_set():  # abandoned while it waited: the new thread takes the task
                tasks.put(task)
                return
            task.stop = stop
            task.started_at = self._clock()
            task.index, task.error = self._compile(task.regex)
            task.finished = True
            self._finished.set()
