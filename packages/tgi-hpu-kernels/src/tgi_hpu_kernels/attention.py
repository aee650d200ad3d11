"""Paged attention over the KV cache, and the per-step metadata every layer reads.

The model runs on a flat batch of token rows ``[N, ...]``. Attention needs them as a grid
``[b, q_len]`` (one row per sequence, right-padded); ``AttentionMetadata`` says how to move
between the two, which KV slots the new tokens write, and what each query may attend to.
Three cases, decided by the metadata's shapes alone (so one graph serves one bucket):

- prefill over its own tokens (``kv_rows is None``): causal SDPA over the grid; with
  right padding a real query never sees a padded key, so no mask is needed unless a
  sliding window is shorter than the grid;
- prefill over a cached prefix (``kv_rows`` and ``q_len > 1``): the new K/V are written
  first, then every row's KV is gathered from its blocks and attended to under ``mask``;
- decode (``q_len == 1``): the same gather, one query per row.

Where the device reads the paged cache in place (the CPU's native kernel), the metadata
carries ``paged`` instead (block tables, lengths and query rows per sequence) and every
case above is one call over the packed token rows: no gather, no grid, no mask.

The metadata is built once per step by the runner (``step_inputs.py``) and passed down
explicitly; it is a NamedTuple of tensors so HPU/CUDA graphs can key and copy it.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor, nn

from tgi_hpu_kernels.kv_cache import KVCache

__all__ = ["AttentionBackend", "AttentionMetadata", "PagedAttention", "PagedRows"]


class PagedRows(NamedTuple):
    """Packed query rows and where their sequences' keys live (all int32, on the device).

    Attributes:
        block_tables: ``[n, width]`` block ids of each sequence (padding: the scratch block).
        seq_lens: ``[n]`` keys of each sequence after this step (cached + new).
        query_starts: ``[n]`` first token row of each sequence's queries.
        query_lens: ``[n]`` query rows of each sequence (its new tokens); they sit at the
            last ``query_lens`` positions, and each attends causally.
    """

    block_tables: Tensor
    seq_lens: Tensor
    query_starts: Tensor
    query_lens: Tensor


class AttentionMetadata(NamedTuple):
    """Per-step attention inputs (all on the device).

    Attributes:
        slots: ``[N]`` int64 KV slot each token row writes (padding rows: the scratch slot).
        query_positions: ``[b, q_len]`` int64 position of every grid cell (padding: 0).
        grid_index: ``[b * q_len]`` token row of every grid cell, or None when the token
            rows already are the grid (static shapes, or packed rows of equal length).
        token_index: ``[N]`` grid cell of every token row, or None when it is the identity.
        kv_rows: ``[b * kv_heads * k_len]`` int64 rows of the cache's ``[slots * kv_heads, d]``
            view holding each grid row's keys in (row, head, key) order, from its block table
            (padding: the scratch block); None for a prefill that attends only to its own
            tokens. ``k_len`` is ``mask.shape[-1]``.
        mask: bool ``[b | 1, 1, q_len, k_len]``, True where a query may attend; None means
            causal over the grid.
        sliding_mask: the same for sliding-window layers (None when the model has none, or
            when causal attention is already exact because the window covers the grid).
        paged: set (and ``kv_rows``, masks and grid indices None) when the device reads
            the paged cache in place: the step's sequences as ``PagedRows``.
    """

    slots: Tensor
    query_positions: Tensor
    grid_index: Tensor | None
    token_index: Tensor | None
    kv_rows: Tensor | None
    mask: Tensor | None
    sliding_mask: Tensor | None
    paged: PagedRows | None = None


class AttentionBackend(Protocol):
    """The device's attention kernels (``tgi_hpu_kernels.device.Device`` implements it)."""

    def prefill_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None,
        scale: float,
        *,
        softcap: float | None = None,
    ) -> Tensor: ...

    def decode_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor,
        scale: float,
        *,
        softcap: float | None = None,
    ) -> Tensor: ...

    def paged_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        key_cache: Tensor,
        value_cache: Tensor,
        slots: Tensor,
        paged: PagedRows,
        scale: float,
        sliding_window: int | None,
        softcap: float | None = None,
    ) -> Tensor: ...


def _to_grid(rows: Tensor, attn: AttentionMetadata) -> Tensor:
    """``[N, heads, d]`` token rows -> ``[b, heads, q_len, d]`` grid (a view when possible)."""
    b, q_len = attn.query_positions.shape
    if attn.grid_index is not None:
        rows = rows.index_select(0, attn.grid_index)
    return rows.view(b, q_len, *rows.shape[1:]).transpose(1, 2)


class PagedAttention(nn.Module):
    """Writes this layer's new K/V to the cache and attends; no weights of its own.

    ``scale`` is the softmax scale (default ``head_dim ** -0.5``); ``softcap``, when set,
    caps the scaled scores as ``softcap * tanh(score / softcap)`` before the mask and softmax
    (Gemma 2's ``attn_logit_softcapping``).
    """

    def __init__(
        self,
        *,
        layer_idx: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        sliding_window: int | None,
        backend: AttentionBackend,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.sliding_window = sliding_window
        self.scale = head_dim**-0.5 if scale is None else scale
        self.softcap = softcap
        self._backend = backend

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, attn: AttentionMetadata, kv: KVCache
    ) -> Tensor:
        """``query`` ``[N, heads, d]``, ``key``/``value`` ``[N, kv_heads, d]`` -> ``[N, heads*d]``.

        Side effect: writes ``key``/``value`` into the cache at ``attn.slots``.
        """
        if attn.paged is not None:  # the device writes the new K/V and reads blocks in place
            return self._backend.paged_attention(
                query,
                key,
                value,
                key_cache=kv.keys[self.layer_idx],
                value_cache=kv.values[self.layer_idx],
                slots=attn.slots,
                paged=attn.paged,
                scale=self.scale,
                sliding_window=self.sliding_window,
                softcap=self.softcap,
            )
        kv.write(self.layer_idx, key, value, attn.slots)
        mask = attn.sliding_mask if self.sliding_window is not None else attn.mask
        if mask is None and self.sliding_window is not None:
            mask = attn.mask
        q = _to_grid(query, attn)  # [b, heads, q_len, d]
        b, _, q_len, _ = q.shape
        cap = self.softcap
        if attn.kv_rows is None:
            k, v = _to_grid(key, attn), _to_grid(value, attn)
            out = self._backend.prefill_attention(q, k, v, mask, self.scale, softcap=cap)
        else:
            assert mask is not None, "attention over cached blocks needs a mask"
            k, v = kv.gather(self.layer_idx, attn.kv_rows, b, mask.shape[-1])
            if q_len == 1:
                out = self._backend.decode_attention(q, k, v, mask, self.scale, softcap=cap)
            else:
                out = self._backend.prefill_attention(q, k, v, mask, self.scale, softcap=cap)
        out = out.transpose(1, 2).reshape(b * q_len, self.num_heads * self.head_dim)
        if attn.token_index is not None:
            out = out.index_select(0, attn.token_index)
        return out
