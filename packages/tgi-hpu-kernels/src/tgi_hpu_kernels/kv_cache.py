"""The paged KV cache: per layer one K and one V tensor of fixed-size token blocks.

Layout per layer: ``[num_blocks + 1, block_size, kv_heads, head_dim]`` for K and for V. A
token at position ``p`` of a sequence lives at slot ``block_table[p // block_size] *
block_size + p % block_size`` of the flattened ``[slots, kv_heads, head_dim]`` view. The
last block (id ``num_blocks``) is scratch: padded token rows write there, and padded block
table entries point there, so padding never touches a real sequence's KV. The scheduler's
allocator sees only ids ``[0, num_blocks)``.

Sizing the pool from memory lives in ``memory.py``; which slots a step writes is the
runner's business (``step_inputs.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]


class KVCache:
    """K and V tensors of every layer, zero-initialised (masked reads must stay finite)."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_block(
        *, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        """Memory of one block across all layers, K and V."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize

    @property
    def scratch_block(self) -> int:
        """The block id padding reads from and writes to."""
        return self.num_blocks

    @property
    def scratch_slot(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def write(self, layer: int, key: Tensor, value: Tensor, slots: Tensor) -> None:
        """Stores ``key``/``value`` ``[tokens, kv_heads, head_dim]`` at ``slots`` ``[tokens]``."""
        k_cache, v_cache = self.keys[layer], self.values[layer]
        k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, key)
        v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, value)

    def gather(
        self, layer: int, rows: Tensor, batch_size: int, k_len: int
    ) -> tuple[Tensor, Tensor]:
        """The keys and values of ``rows`` as contiguous ``[batch_size, kv_heads, k_len, d]``.

        ``rows`` indexes the ``[slots * kv_heads, head_dim]`` view of the cache in
        (sequence, head, key) order, so one row gather yields the layout the attention matmuls
        read without a transposing copy (5x faster on the CPU than gathering whole blocks).
        """
        k_cache, v_cache = self.keys[layer], self.values[layer]
        head_dim = k_cache.shape[-1]
        shape = (batch_size, k_cache.shape[2], k_len, head_dim)
        keys = k_cache.view(-1, head_dim).index_select(0, rows).view(shape)
        values = v_cache.view(-1, head_dim).index_select(0, rows).view(shape)
        return keys, values
