"""Content hashes of full KV blocks: the keys of the prefix cache.

A block's hash covers its tokens and, through its parent's hash, every token before it, so
equal hashes mean equal prefixes. BLAKE2b (128-bit digests) rather than Python's ``hash``:
a collision would hand one request another request's KV, and ``hash`` of ints is easy to
collide on purpose. The chain starts from a root that names the LoRA adapter, so requests for
different adapters never share KV, and, for a prompt with images, the images' digests: their
placeholder tokens are the same whatever the image, their KV is not.

Where the hashed blocks live (the hash -> block map, reference counts, LRU eviction) is the
allocator's business (``tgi_scheduler.block_allocator``); the sequence keeps its own chain.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from hashlib import blake2b

from tgi_core.contract import ImageInput

__all__ = ["BlockHash", "extend_block_hashes", "hash_block", "images_root", "root_hash"]

BlockHash = bytes

_DIGEST_SIZE = 16


def root_hash(namespace: str | None) -> BlockHash:
    """The parent of a sequence's first block: one chain per adapter (``None``: base model)."""
    seed = b"" if namespace is None else b"adapter:" + namespace.encode()
    return blake2b(seed, digest_size=_DIGEST_SIZE).digest()


def images_root(root: BlockHash, images: Sequence[ImageInput]) -> BlockHash:
    """``root`` mixed with every image's bytes: one chain per (adapter, images) pair."""
    digest = blake2b(root, digest_size=_DIGEST_SIZE)
    for image in images:
        digest.update(blake2b(image.data, digest_size=_DIGEST_SIZE).digest())
    return digest.digest()


def hash_block(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """The hash of one full block of ``token_ids`` that follows the block hashed ``parent``."""
    return blake2b(parent + array("q", token_ids).tobytes(), digest_size=_DIGEST_SIZE).digest()


def extend_block_hashes(
    hashes: list[BlockHash],
    token_ids: Sequence[int],
    block_size: int,
    num_blocks: int,
    root: BlockHash,
) -> None:
    """Append to ``hashes`` the chained hashes of full blocks ``len(hashes)..num_blocks - 1``.

    The caller guarantees ``token_ids`` holds at least ``num_blocks * block_size`` tokens.
    """
    parent = hashes[-1] if hashes else root
    for index in range(len(hashes), num_blocks):
        start = index * block_size
        parent = hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
