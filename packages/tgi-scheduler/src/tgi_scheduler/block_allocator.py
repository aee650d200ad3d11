"""The paged KV block pool: free list, reference counts and the prefix cache.

The allocator is the only code that changes a block's reference count. A block is in exactly
one of three states:

- free: on the free list (a deque, handed out lowest id first at start, then in release order);
- used: reference count > 0, in some sequence's block table (shared prefix blocks count once
  per table that holds them);
- cached and evictable: reference count 0 but its KV is still valid and findable by content
  hash; such blocks are reused by later requests with the same prefix, or evicted least
  recently released first when the free list runs dry.

Block 0 is reserved by default (as TGI reserves it): it is never handed out, so a runner can
point the rows it adds to reach a bucket size (and its liveness checks) at it without touching
a live sequence's KV.

The allocator knows nothing about sequences, budgets or tokens beyond the hashes it is given.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

from tgi_scheduler.prefix_cache import BlockHash

__all__ = ["BlockAllocator", "NoFreeBlocksError"]


class NoFreeBlocksError(RuntimeError):
    """More blocks were asked for than are free or evictable."""


class BlockAllocator:
    """Hands out KV blocks of ``block_size`` token slots and caches full blocks by content.

    Args:
        num_blocks: blocks in the KV cache (the runner's ``num_kv_blocks``).
        block_size: token slots per block (128 on HPU, 16 on CPU).
        enable_prefix_caching: keep released full blocks findable by hash until evicted.
        reserve_first_block: never hand out block 0 (the runner's padding block).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        reserve_first_block: bool = True,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self._block_size = block_size
        self._enable_prefix_caching = enable_prefix_caching
        self._first_block = 1 if reserve_first_block else 0
        self._reset(num_blocks)

    def _reset(self, num_blocks: int) -> None:
        if num_blocks <= self._first_block:
            raise ValueError(f"the KV cache needs at least one usable block, got {num_blocks}")
        self._num_blocks = num_blocks
        self._ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(self._first_block, num_blocks))
        self._block_hashes: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}
        # Cached blocks nobody references, least recently released first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._num_used = 0

    # --- sizes --------------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_blocks(self) -> int:
        """Blocks in the cache, the reserved one included."""
        return self._num_blocks

    @property
    def num_usable_blocks(self) -> int:
        return self._num_blocks - self._first_block

    @property
    def num_free(self) -> int:
        """Blocks on the free list (not counting evictable cached blocks)."""
        return len(self._free)

    @property
    def num_evictable(self) -> int:
        """Cached blocks with no reference: reusable by content, or evictable."""
        return len(self._evictable)

    @property
    def num_available(self) -> int:
        """Blocks ``allocate`` can hand out now: free plus evictable."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        """Blocks with a reference count above zero."""
        return self._num_used

    @property
    def prefix_caching(self) -> bool:
        return self._enable_prefix_caching

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    # --- allocation ---------------------------------------------------------------------

    def allocate(self, num_blocks: int) -> list[int]:
        """Take ``num_blocks`` blocks (reference count 1 each), evicting cached ones if needed.

        Raises:
            NoFreeBlocksError: fewer than ``num_blocks`` blocks are free or evictable.
        """
        if num_blocks > len(self._free) + len(self._evictable):
            raise NoFreeBlocksError(
                f"{num_blocks} KV blocks requested, {self.num_available} available"
            )
        block_ids = [self._take() for _ in range(num_blocks)]
        self._num_used += num_blocks
        return block_ids

    def _take(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)
            block_hash = self._block_hashes[block_id]
            assert block_hash is not None  # only cached blocks are evictable
            del self._cached[block_hash]
            self._block_hashes[block_id] = None
        self._ref_counts[block_id] = 1
        return block_id

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference to each block; unreferenced blocks become free or evictable.

        Blocks are released last first, so a sequence's tail is evicted before its prefix.

        Raises:
            ValueError: a block was freed more often than it was allocated or acquired.
        """
        ref_counts = self._ref_counts
        for block_id in reversed(block_ids):
            count = ref_counts[block_id] - 1
            if count < 0:
                raise ValueError(f"KV block {block_id} freed more often than allocated")
            ref_counts[block_id] = count
            if count == 0:
                self._num_used -= 1
                if self._block_hashes[block_id] is None:
                    self._free.append(block_id)
                else:
                    self._evictable[block_id] = None

    # --- prefix cache -------------------------------------------------------------------

    def match_prefix(self, block_hashes: Iterable[BlockHash]) -> list[int]:
        """The cached blocks holding the longest prefix of ``block_hashes`` (no side effect)."""
        matched: list[int] = []
        if not self._enable_prefix_caching:
            return matched
        for block_hash in block_hashes:
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            matched.append(block_id)
        return matched

    def num_unreferenced(self, block_ids: Iterable[int]) -> int:
        """How many of ``block_ids`` (cached blocks) would leave the evictable pool if acquired."""
        ref_counts = self._ref_counts
        return sum(1 for block_id in block_ids if ref_counts[block_id] == 0)

    def acquire(self, block_ids: Iterable[int]) -> None:
        """Take one more reference to cached blocks found by ``match_prefix``."""
        for block_id in block_ids:
            if self._ref_counts[block_id] == 0:
                del self._evictable[block_id]
                self._num_used += 1
            self._ref_counts[block_id] += 1

    def register(self, block_id: int, block_hash: BlockHash) -> None:
        """Make a used, fully written block findable by ``block_hash``.

        A no-op with prefix caching off, or when that content is already cached in another
        block (two sequences with one prefix prefilled in the same step): the duplicate stays
        private and goes back to the free list when released.
        """
        if not self._enable_prefix_caching or block_hash in self._cached:
            return
        if self._block_hashes[block_id] is None:
            self._cached[block_hash] = block_id
            self._block_hashes[block_id] = block_hash

    # --- capacity changes ---------------------------------------------------------------

    def resize(self, num_blocks: int) -> None:
        """Adopt a new KV capacity (after warmup settled it); forgets the prefix cache.

        Raises:
            RuntimeError: a block is still referenced.
        """
        if self._num_used:
            raise RuntimeError(f"cannot resize the KV cache while {self._num_used} blocks are used")
        self._reset(num_blocks)
