"""One request's scheduling state: its tokens, its KV blocks, its status, its stop criteria.

A ``Sequence`` is plain state with a single writer, the ``Scheduler``: the queue only reads
it to order and skip entries, the allocator never sees it (it sees block ids and hashes).
The runner never sees it either; it gets ``PrefillItem``/``DecodeItem`` copies.
"""

from __future__ import annotations

import enum
from collections.abc import Container

from tgi_core.contract import FinishReason, GenerationRequest, StopChecker
from tgi_scheduler.prefix_cache import BlockHash
from tgi_scheduler.speculation import NgramDrafter

__all__ = ["FINISH_REASONS", "Sequence", "SequenceStatus"]


class SequenceStatus(enum.IntEnum):
    """Ordered so that ``status > PREEMPTED`` means finished. ``PREPARING``: waiting, out of
    the queue, for the runner to ready it (``tgi_scheduler.preparing``)."""

    PREPARING = -1
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_LENGTH = 3
    FINISHED_EOS_TOKEN = 4
    FINISHED_STOP_SEQUENCE = 5
    FINISHED_ABORTED = 6
    FINISHED_FAILED = 7


FINISH_REASONS: dict[SequenceStatus, FinishReason] = {
    SequenceStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    SequenceStatus.FINISHED_EOS_TOKEN: FinishReason.EOS_TOKEN,
    SequenceStatus.FINISHED_STOP_SEQUENCE: FinishReason.STOP_SEQUENCE,
}
"""The statuses that end a request with a token, as TGI's finish reasons."""


class Sequence:
    """The state of one request from admission to its final event.

    ``token_ids`` is the whole history (prompt, then generated tokens). ``num_computed_tokens``
    of them have KV in ``block_ids``. ``reserved_tokens``/``reserved_blocks`` is the budget
    held for the current generation chunk: the sequence may grow to ``reserved_tokens`` tokens
    without asking for more (see ``Scheduler``).
    """

    __slots__ = (
        "arrival_index",
        "arrival_time",
        "block_hashes",
        "block_ids",
        "block_table",
        "drafter",
        "eos_enabled",
        "first_scheduled_time",
        "max_num_tokens",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_prompt_tokens",
        "overdue",
        "proposed_draft",
        "request",
        "request_id",
        "reserved_blocks",
        "reserved_tokens",
        "send_prompt_logprobs",
        "status",
        "stop_checker",
        "token_ids",
    )

    def __init__(
        self,
        request: GenerationRequest,
        *,
        arrival_time: float,
        arrival_index: int,
        max_total_tokens: int,
        stop_checker: StopChecker | None = None,
        ignore_eos: bool = False,
    ) -> None:
        self.request = request
        self.request_id = request.request_id
        self.token_ids = list(request.prompt_ids)
        self.num_prompt_tokens = len(request.prompt_ids)
        # Generation stops at max_new_tokens, or when the sequence fills max_total_tokens
        # (the widest block table): both end with finish reason "length".
        self.max_num_tokens = min(self.num_prompt_tokens + request.max_new_tokens, max_total_tokens)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.block_ids: list[int] = []
        self.block_table: tuple[int, ...] = ()  # tuple(block_ids), rebuilt when blocks change
        self.block_hashes: list[BlockHash] = []  # chained hashes of the full blocks so far
        self.status = SequenceStatus.WAITING
        self.arrival_time = arrival_time
        self.arrival_index = arrival_index
        self.first_scheduled_time: float | None = None
        self.reserved_tokens = 0
        self.reserved_blocks = 0
        self.stop_checker = stop_checker
        self.eos_enabled = not (request.ignore_eos or ignore_eos)
        self.send_prompt_logprobs = request.prompt_logprobs
        self.overdue = False
        self.drafter: NgramDrafter | None = None  # --speculate: built at its first decode
        self.proposed_draft: tuple[int, ...] | None = None  # the runner's own (Medusa)

    def __repr__(self) -> str:
        return (
            f"Sequence(request_id={self.request_id}, status={self.status.name}, "
            f"num_tokens={len(self.token_ids)}, num_blocks={len(self.block_ids)})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def queue_seconds(self) -> float:
        """How long the request waited before its first prefill."""
        assert self.first_scheduled_time is not None, "not scheduled yet"
        return self.first_scheduled_time - self.arrival_time

    @property
    def is_finished(self) -> bool:
        return self.status > SequenceStatus.PREEMPTED

    def stop_status(self, token_id: int, eos_token_ids: Container[int]) -> SequenceStatus | None:
        """TGI's stop criteria for the token just appended, in TGI's order.

        Length first (``max_new_tokens`` reached, or ``max_total_tokens`` filled), then EOS
        unless ``ignore_eos``, then the stop-sequence checker (fed only when the first two did
        not stop the sequence, as TGI feeds its stop-sequence criteria).
        """
        if len(self.token_ids) >= self.max_num_tokens:
            return SequenceStatus.FINISHED_LENGTH
        if self.eos_enabled and token_id in eos_token_ids:
            return SequenceStatus.FINISHED_EOS_TOKEN
        if self.stop_checker is not None and self.stop_checker(token_id):
            return SequenceStatus.FINISHED_STOP_SEQUENCE
        return None
