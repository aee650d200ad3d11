"""TGI's batching decision: when waiting requests join, and how many fit the budgets.

Two functions, after TGI's router (``backends/v3``: ``batching_task`` and ``next_batch``):

- ``concat_limits`` says how many waiting requests may join the running batch this step:
  with nothing running, any number up to ``max_batch_size``; otherwise at least
  ``floor(running * waiting_served_ratio)`` of them (so a busy batch is not paused for one
  request), unless the queue has waited ``max_waiting_tokens`` decode steps since the last
  prefill, and at most ``max_batch_size - running``.
- ``next_batch`` pops candidates in queue order and stops at the first that does not fit
  (TGI never skips ahead): the prefill budget, the KV-block budget, the token budget, the
  size limits. Fewer than the minimum taken means none taken, all put back in order.

The prefill budget uses TGI's padded formula ``(n + 1) * max_new <= max_batch_prefill_tokens``
(``max_new``: the longest run of new, uncached tokens in the batch including the candidate),
because a prefill here runs one dense, padded ``[batch, length]`` tensor: the padded product is
what it costs, and it bounds the paged sum of new tokens as well.

Neither function touches KV blocks or sequences' state: ``probe`` prices a candidate, the
scheduler admits what comes back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.queue import AdmissionQueue
from tgi_scheduler.sequence import Sequence

__all__ = ["Admission", "BatchLimits", "ConcatReason", "concat_limits", "next_batch"]

ConcatReason = Literal["backpressure", "wait_exceeded"]


@dataclass(slots=True)
class Admission:
    """What admitting ``seq`` would take.

    ``cached_block_ids`` hold its first ``num_cached_tokens`` tokens (prefix-cache hit);
    ``num_new_tokens`` are computed by the prefill. ``reserved_tokens``/``reserved_blocks`` is
    the budget held for its first chunk; ``cost_blocks`` is how much the pool of available
    blocks shrinks over that chunk (new blocks, plus cached blocks it takes off the evictable
    list).
    """

    seq: Sequence
    cached_block_ids: list[int]
    num_cached_tokens: int
    num_new_tokens: int
    reserved_tokens: int
    reserved_blocks: int
    cost_blocks: int


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The limits of one ``next_batch`` call (TGI's min/max size and two budgets, plus blocks)."""

    min_size: int
    max_size: int
    prefill_token_budget: int
    token_budget: int
    block_budget: int


def concat_limits(
    num_running: int, waiting_steps: int, settings: SchedulerSettings
) -> tuple[int, int, ConcatReason | None]:
    """TGI's ``(min_size, max_size)`` for the next prefill, and the concat reason it counts.

    ``waiting_steps`` is TGI's ``waiting_tokens``: 1 after a prefill, +1 after each decode.
    The reason is None when nothing is running (a fresh batch, not a concatenation).
    """
    if num_running == 0:
        return 0, settings.max_batch_size, None
    max_size = settings.max_batch_size - num_running
    if waiting_steps >= settings.max_waiting_tokens:
        return 0, max_size, "wait_exceeded"
    return math.floor(num_running * settings.waiting_served_ratio), max_size, "backpressure"


def next_batch(
    queue: AdmissionQueue, limits: BatchLimits, probe: Callable[[Sequence], Admission]
) -> list[Admission]:
    """Pop the sequences that join the next prefill; an empty list when none may.

    Side effect: popped sequences that are not taken go back to the queue in order.
    """
    if limits.max_size <= 0 or len(queue) < max(limits.min_size, 1):
        return []
    taken: list[Admission] = []
    max_new = num_tokens = num_blocks = 0
    while len(taken) < limits.max_size:
        seq = queue.pop()
        if seq is None:
            break
        admission = probe(seq)
        longest = max(max_new, admission.num_new_tokens)
        if (
            (len(taken) + 1) * longest > limits.prefill_token_budget
            or num_tokens + admission.reserved_tokens > limits.token_budget
            or num_blocks + admission.cost_blocks > limits.block_budget
        ):
            queue.put_back([seq])
            break
        taken.append(admission)
        max_new = longest
        num_tokens += admission.reserved_tokens
        num_blocks += admission.cost_blocks
    if len(taken) < limits.min_size:
        queue.put_back([a.seq for a in taken])
        return []
    return taken
