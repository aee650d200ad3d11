"""The paged KV cache: per layer one K and one V tensor of fixed-size token blocks.

Layout per layer: ``[num_blocks + 1, block_size, kv_heads, head_dim]`` for K and for V. A
token at position ``p`` of a sequence lives at slot ``block_table[p // block_size] *
block_size + p % block_size`` of the flattened ``[slots, kv_heads, head_dim]`` view. The
last block (id ``num_blocks``) is scratch: padded token rows write there, and padded block
table entries point there, so padding never touches a real sequence's KV. The scheduler's
allocator sees only ids ``[0, num_blocks)``.

With ``--kv-cache-dtype fp8_e4m3fn`` (or ``fp8_e5m2``) the blocks hold FP8 with unit
scale, as TGI-Gaudi's default: K/V are clamped to the format's range when written and
widened to the model's dtype when read, so a block costs a half (bf16) or a quarter
(float32) of the memory and the pool holds that many times more tokens. Attention then
reads through ``gather``: the devices' in-place paged kernels read the model's dtype only.

Sizing the pool from memory lives in ``memory.py``; which slots a step writes is the
runner's business (``step_inputs.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KV_CACHE_DTYPES", "KVCache"]

# --kv-cache-dtype -> the storage dtype
KV_CACHE_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


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
        storage_dtype: torch.dtype | None = None,
    ) -> None:
        """``dtype`` is the model's (what ``gather`` returns); ``storage_dtype``, when set,
        what the blocks hold (an FP8 format)."""
        shape = (num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        stored = storage_dtype or dtype
        self._limit = torch.finfo(stored).max if stored != dtype else None
        self.keys = [torch.zeros(shape, dtype=stored, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=stored, device=device) for _ in range(num_layers)]

    @property
    def is_narrowed(self) -> bool:
        """Whether the blocks hold a narrower dtype than the model's (FP8)."""
        return self._limit is not None

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
        if self._limit is not None:
            # saturate (a cast past the FP8 range gives NaN); copy the bytes (torch has no
            # FP8 index_copy on the CPU)
            fp8 = k_cache.dtype
            key = key.clamp(-self._limit, self._limit).to(fp8).view(torch.uint8)
            value = value.clamp(-self._limit, self._limit).to(fp8).view(torch.uint8)
            k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
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
        if self._limit is not None:  # the bytes gathered, then widened
            fp8 = k_cache.dtype
            k_bytes, v_bytes = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
            keys = k_bytes.view(-1, head_dim).index_select(0, rows).view(fp8).view(shape)
            values = v_bytes.view(-1, head_dim).index_select(0, rows).view(fp8).view(shape)
            return keys.to(self.dtype), values.to(self.dtype)
        keys = k_cache.view(-1, head_dim).index_select(0, rows).view(shape)
        values = v_cache.view(-1, head_dim).index_select(0, rows).view(shape)
        return keys, values
