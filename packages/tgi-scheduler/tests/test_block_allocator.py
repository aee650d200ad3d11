from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgi_scheduler.block_allocator import BlockAllocator, NoFreeBlocksError
from tgi_scheduler.prefix_cache import extend_block_hashes, hash_block, root_hash


def consistent(allocator: BlockAllocator) -> bool:
    counts = [allocator.ref_count(b) for b in range(allocator.num_blocks)]
    used = sum(1 for c in counts if c > 0)
    return (
        min(counts) >= 0
        and used == allocator.num_used
        and allocator.num_free + allocator.num_evictable + used == allocator.num_usable_blocks
    )


def test_block_zero_is_reserved_and_blocks_come_lowest_first() -> None:
    allocator = BlockAllocator(8, 16, enable_prefix_caching=False)
    assert allocator.num_usable_blocks == 7
    assert allocator.allocate(3) == [1, 2, 3]
    assert allocator.allocate(4) == [4, 5, 6, 7]
    with pytest.raises(NoFreeBlocksError):
        allocator.allocate(1)
    unreserved = BlockAllocator(4, 16, reserve_first_block=False)
    assert unreserved.allocate(1) == [0]


def test_free_returns_blocks_and_double_free_is_refused() -> None:
    allocator = BlockAllocator(4, 16)
    blocks = allocator.allocate(3)
    allocator.free(blocks)
    assert allocator.num_available == 3 and allocator.num_used == 0
    with pytest.raises(ValueError, match="freed more often"):
        allocator.free([blocks[0]])
    assert consistent(allocator)


def test_cached_blocks_are_shared_by_reference_count() -> None:
    allocator = BlockAllocator(8, 4)
    root = root_hash(None)
    hashes: list[bytes] = []
    extend_block_hashes(hashes, list(range(8)), 4, 2, root)
    blocks = allocator.allocate(3)
    allocator.register(blocks[0], hashes[0])
    allocator.register(blocks[1], hashes[1])
    assert allocator.match_prefix(hashes) == blocks[:2]
    allocator.acquire(blocks[:2])
    assert allocator.ref_count(blocks[0]) == 2
    allocator.free(blocks)  # the first owner leaves: the shared prefix stays used
    assert allocator.num_used == 2
    allocator.free(blocks[:2])  # the second leaves: the prefix becomes evictable
    assert allocator.num_evictable == 2 and allocator.num_used == 0
    assert allocator.match_prefix(hashes) == blocks[:2]
    assert allocator.num_unreferenced(blocks[:2]) == 2
    allocator.acquire(blocks[:1])
    assert allocator.num_evictable == 1 and allocator.num_used == 1
    assert consistent(allocator)


def test_lru_eviction_takes_tails_first_when_the_free_list_is_dry() -> None:
    allocator = BlockAllocator(5, 2)
    root = root_hash(None)
    hashes: list[bytes] = []
    extend_block_hashes(hashes, [1, 2, 3, 4, 5, 6], 2, 3, root)
    blocks = allocator.allocate(3)
    for block_id, block_hash in zip(blocks, hashes, strict=True):
        allocator.register(block_id, block_hash)
    allocator.free(blocks)
    assert allocator.num_free == 1 and allocator.num_evictable == 3
    assert allocator.allocate(1) == [4]  # the free list first
    allocator.allocate(1)  # then the least recently released: the chain's tail
    assert allocator.match_prefix(hashes) == blocks[:2]
    allocator.allocate(1)
    assert allocator.match_prefix(hashes) == blocks[:1]
    assert consistent(allocator)


def test_duplicate_content_is_registered_once() -> None:
    allocator = BlockAllocator(4, 2)
    block_hash = hash_block(root_hash(None), [7, 8])
    first, second = allocator.allocate(2)
    allocator.register(first, block_hash)
    allocator.register(second, block_hash)
    allocator.free([first, second])
    assert allocator.match_prefix([block_hash]) == [first]
    assert allocator.num_evictable == 1 and allocator.num_free == 2


def test_prefix_caching_off_never_matches() -> None:
    allocator = BlockAllocator(4, 2, enable_prefix_caching=False)
    block_hash = hash_block(root_hash(None), [7, 8])
    (block,) = allocator.allocate(1)
    allocator.register(block, block_hash)
    allocator.free([block])
    assert allocator.match_prefix([block_hash]) == []
    assert allocator.num_evictable == 0


def test_adapters_have_separate_chains() -> None:
    tokens = [1, 2, 3, 4]
    assert hash_block(root_hash(None), tokens) != hash_block(root_hash("lora-a"), tokens)
    assert hash_block(root_hash("lora-a"), tokens) == hash_block(root_hash("lora-a"), tokens)


def test_resize_only_when_idle() -> None:
    allocator = BlockAllocator(4, 2)
    blocks = allocator.allocate(1)
    with pytest.raises(RuntimeError, match="while 1 blocks are used"):
        allocator.resize(10)
    allocator.free(blocks)
    allocator.resize(10)
    assert allocator.num_usable_blocks == 9 and allocator.num_available == 9


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "share"]), st.integers(0, 6))))
def test_random_operations_keep_the_pool_consistent(ops: list[tuple[str, int]]) -> None:
    allocator = BlockAllocator(12, 2)
    root = root_hash(None)
    owners: list[list[int]] = []
    for op, n in ops:
        if op == "alloc" and n <= allocator.num_available:
            blocks = allocator.allocate(n)
            for i, block_id in enumerate(blocks):
                allocator.register(block_id, hash_block(root, [n, i]))
            owners.append(blocks)
        elif op == "share" and owners:
            shared = owners[n % len(owners)][:1]
            allocator.acquire(shared)
            owners.append(shared)
        elif op == "free" and owners:
            allocator.free(owners.pop(n % len(owners)))
        assert consistent(allocator)
    for blocks in owners:
        allocator.free(blocks)
    assert allocator.num_used == 0
    assert allocator.num_available == allocator.num_usable_blocks
