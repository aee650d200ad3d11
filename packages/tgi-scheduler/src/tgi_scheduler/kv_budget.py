"""The KV ledger: what each running sequence holds and may still take, in blocks and tokens.

A sequence admitted with ``n`` tokens reserves ``min(max_num_tokens, n + max_generation_chunk)``
tokens (TGI's ``input + min(max_new_tokens, 1024)``) and the blocks they need, but takes
blocks only as it grows: its prefill takes the blocks of its history plus the slot of the
token it generates, each decode one more block when it crosses a block boundary. The ledger
keeps one invariant:

    free + evictable blocks >= sum over running sequences of (reserved - held) blocks

so a sequence never fails to grow within its chunk. Admission prices a candidate by how much
it shrinks the free + evictable pool over its chunk: its reserved blocks, minus the cached
blocks it reuses, plus those of them it takes off the evictable list. When a chunk is used
up, ``renew`` reserves the next one if the pool (and ``max_batch_total_tokens``) allows.

The ledger moves blocks through the allocator and writes a sequence's blocks and
reservation; the scheduler decides who is admitted, renewed, preempted or retired.
"""

from __future__ import annotations

import itertools

from tgi_core.contract import GenerationRequest
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.block_allocator import BlockAllocator
from tgi_scheduler.buckets import blocks_for
from tgi_scheduler.limits import token_budget
from tgi_scheduler.policy import Admission
from tgi_scheduler.prefix_cache import BlockHash, extend_block_hashes, images_root, root_hash
from tgi_scheduler.sequence import Sequence

__all__ = ["KVBudget"]


class KVBudget:
    """Reservations of running sequences over the allocator's blocks (see module docstring)."""

    def __init__(self, settings: SchedulerSettings, allocator: BlockAllocator) -> None:
        self.allocator = allocator
        self._block_size = settings.block_size
        self._chunk = settings.max_generation_chunk
        self.token_budget = token_budget(settings)
        self.reserved_tokens = 0  # sum of running sequences' reserved_tokens
        self.outstanding_blocks = 0  # sum of (reserved_blocks - held blocks)
        self._roots: dict[str | None, BlockHash] = {}

    @property
    def token_headroom(self) -> int:
        return self.token_budget - self.reserved_tokens

    @property
    def block_headroom(self) -> int:
        return self.allocator.num_available - self.outstanding_blocks

    def _root(self, request: GenerationRequest) -> BlockHash:
        adapter_id = request.adapter_id
        root = self._roots.get(adapter_id)
        if root is None:
            root = self._roots[adapter_id] = root_hash(adapter_id)
        # Image placeholders are the same tokens for every image: never share across images.
        return images_root(root, request.images) if request.images else root

    def probe(self, seq: Sequence) -> Admission:
        """What admitting ``seq`` takes: its prefix-cache hit, new tokens, reservation, cost."""
        block_size = self._block_size
        allocator = self.allocator
        num_tokens = len(seq.token_ids)
        cached: list[int] = []
        # No cache reads when the runner must compute every prompt logprob.
        if allocator.prefix_caching and not seq.send_prompt_logprobs:
            # Never the whole history: at least one token is computed, as in TGI.
            num_full = (num_tokens - 1) // block_size
            hashes = seq.block_hashes
            if len(hashes) < num_full:
                root = self._root(seq.request)
                extend_block_hashes(hashes, seq.token_ids, block_size, num_full, root)
            cached = allocator.match_prefix(itertools.islice(hashes, num_full))
        num_cached_tokens = len(cached) * block_size
        reserved_tokens = min(seq.max_num_tokens, num_tokens + self._chunk)
        reserved_blocks = blocks_for(reserved_tokens, block_size)
        return Admission(
            seq=seq,
            cached_block_ids=cached,
            num_cached_tokens=num_cached_tokens,
            num_new_tokens=num_tokens - num_cached_tokens,
            reserved_tokens=reserved_tokens,
            reserved_blocks=reserved_blocks,
            cost_blocks=reserved_blocks - len(cached) + allocator.num_unreferenced(cached),
        )

    def admit(self, admissions: list[Admission]) -> None:
        """Give each admitted sequence its prefill blocks and its first chunk's reservation."""
        allocator = self.allocator
        # Pin every cache hit before allocating, so that no allocation evicts a block that a
        # later sequence of this batch was matched against.
        for admission in admissions:
            allocator.acquire(admission.cached_block_ids)
        for admission in admissions:
            seq = admission.seq
            cached = admission.cached_block_ids
            num_new_blocks = blocks_for(len(seq.token_ids) + 1, self._block_size) - len(cached)
            seq.block_ids = cached + allocator.allocate(num_new_blocks)
            seq.block_table = tuple(seq.block_ids)
            seq.num_computed_tokens = seq.num_cached_tokens = admission.num_cached_tokens
            seq.reserved_tokens = admission.reserved_tokens
            seq.reserved_blocks = admission.reserved_blocks
            self.reserved_tokens += admission.reserved_tokens
            self.outstanding_blocks += admission.reserved_blocks - len(seq.block_ids)

    def grow(self, seq: Sequence, num_draft: int = 0) -> None:
        """Give ``seq`` the blocks its next decode writes into: its last token's slot and
        ``num_draft`` more (speculative decoding; the caller keeps them in the reservation)."""
        block_ids = seq.block_ids
        num_new = blocks_for(len(seq.token_ids) + num_draft, self._block_size) - len(block_ids)
        if num_new > 0:
            # Within the reservation, so the invariant guarantees the blocks.
            block_ids.extend(self.allocator.allocate(num_new))
            seq.block_table = tuple(block_ids)
            self.outstanding_blocks -= num_new

    def mark_computed(self, seq: Sequence) -> None:
        """A step computed the KV of ``seq``'s history (before its new token is appended).

        The blocks this filled are offered to the prefix cache: their KV now exists.
        """
        num_blocks_before = seq.num_computed_tokens // self._block_size
        seq.num_computed_tokens = len(seq.token_ids)
        num_full = seq.num_computed_tokens // self._block_size
        if num_full <= num_blocks_before or not self.allocator.prefix_caching:
            return
        root = self._root(seq.request)
        extend_block_hashes(seq.block_hashes, seq.token_ids, self._block_size, num_full, root)
        for index in range(num_blocks_before, num_full):
            self.allocator.register(seq.block_ids[index], seq.block_hashes[index])

    def renew(self, seq: Sequence) -> bool:
        """Reserve ``seq``'s next generation chunk; False (nothing changed) if it does not fit."""
        reserved_tokens = min(seq.max_num_tokens, len(seq.token_ids) + self._chunk)
        reserved_blocks = blocks_for(reserved_tokens, self._block_size)
        extra_tokens = reserved_tokens - seq.reserved_tokens
        extra_blocks = reserved_blocks - seq.reserved_blocks
        if extra_blocks > self.block_headroom or extra_tokens > self.token_headroom:
            return False
        seq.reserved_tokens = reserved_tokens
        seq.reserved_blocks = reserved_blocks
        self.reserved_tokens += extra_tokens
        self.outstanding_blocks += extra_blocks
        return True

    def release(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks (full ones stay cached) and its reservation."""
        self.allocator.free(seq.block_ids)
        self.outstanding_blocks -= seq.reserved_blocks - len(seq.block_ids)
        self.reserved_tokens -= seq.reserved_tokens
        seq.block_ids = []
        seq.block_table = ()
        seq.reserved_tokens = seq.reserved_blocks = seq.num_computed_tokens = 0
