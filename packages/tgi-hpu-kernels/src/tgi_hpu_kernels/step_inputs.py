"""Turning a StepPlan's items into the tensors of one forward pass.

Padding rules (see ``attention.py`` for how attention reads them):

- static shapes (HPU, CUDA): exactly the plan's bucket. Prefill is a right-padded grid
  ``[batch_size, seq_len]`` flattened into token rows; decode has ``batch_size`` rows and
  ``num_blocks``-wide block tables. Padded rows read and write only the scratch block.
- packed (the CPU): prefill token rows are the real tokens back to back (no padding
  compute) and attention regroups them into a ``[n, longest]`` grid; decode has one row per
  real sequence and block tables as wide as the longest sequence needs.
- paged (``KVLayout.paged``, the CPU's native kernels): no grid, masks or gather rows at
  all; ``PagedRows`` says where each sequence's queries and blocks are (decode steps, and
  packed prefills; static prefills keep the grid).

Everything is built on the host with a few vectorised ops per step (no per-token Python in
the forward pass) and moved to the device once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tgi_core.contract import DecodeItem, DecodeShape, PrefillItem, PrefillShape
from tgi_hpu_kernels.attention import AttentionMetadata, PagedRows

__all__ = ["StepInputs", "build_decode", "build_prefill"]


@dataclass(frozen=True, slots=True)
class StepInputs:
    """One forward pass: token rows, their positions, attention metadata, rows to sample."""

    input_ids: Tensor  # [N]
    positions: Tensor  # [N]
    attn: AttentionMetadata
    logits_index: Tensor  # [n] token row of each real sequence's last token
    token_offsets: tuple[int, ...]  # first token row of each real sequence
    max_seq_len: int  # longest sequence after this step (dynamic RoPE)


@dataclass(frozen=True, slots=True)
class KVLayout:
    """What the builders need to know about the KV cache and the model."""

    block_size: int
    scratch_block: int
    num_kv_heads: int
    sliding_window: int | None = None
    # Attention reads the paged cache in place (``PagedRows``): decode steps, and prefills
    # when rows are packed; otherwise gather rows, masks and grid indices are built.
    paged: bool = False

    @property
    def scratch_slot(self) -> int:
        return self.scratch_block * self.block_size


def _block_table_tensor(tables: Sequence[Sequence[int]], rows: int, width: int, pad: int) -> Tensor:
    """``[rows, width]`` block ids; ``pad`` (the scratch block) fills the rest."""
    out = torch.full((rows, width), pad, dtype=torch.int64)
    for i, table in enumerate(tables):
        used = table[:width]
        if used:
            if min(used) < 0 or max(used) >= pad:
                raise ValueError(f"block table {tuple(table)} leaves the pool [0, {pad})")
            out[i, : len(used)] = torch.tensor(used, dtype=torch.int64)
    return out


def _kv_rows(tables: Tensor, layout: KVLayout, k_len: int) -> Tensor:
    """Cache rows of every (table row, kv head, key < k_len) in that order (``KVCache.gather``)."""
    offsets = torch.arange(layout.block_size)
    slots = (tables[:, :, None] * layout.block_size + offsets).flatten(1)[:, :k_len]
    heads = torch.arange(layout.num_kv_heads)[None, :, None]
    return (slots[:, None, :] * layout.num_kv_heads + heads).flatten()


def _blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def _check_tables(items: Sequence[PrefillItem], block_size: int) -> None:
    for item in items:
        if len(item.block_table) * block_size < len(item.token_ids):
            raise ValueError(
                f"sequence {item.request_id}: block table of {len(item.block_table)} blocks "
                f"cannot hold {len(item.token_ids)} tokens"
            )


def _visible(query_pos: Tensor, key_pos: Tensor, window: int | None) -> Tensor:
    """bool mask: key position <= query position (and inside the window, when there is one)."""
    mask = key_pos <= query_pos
    if window is not None:
        mask &= key_pos > query_pos - window
    return mask


def _prefill_masks(
    query_pos: Tensor, k_len: int | None, layout: KVLayout
) -> tuple[Tensor | None, Tensor | None]:
    window = layout.sliding_window
    if k_len is None:
        q_len = query_pos.shape[1]
        if window is None or window >= q_len:
            return None, None  # causal over the grid is exact
        grid = torch.arange(q_len)
        return None, _visible(grid[:, None], grid[None, :], window)[None, None]
    key_pos = torch.arange(k_len)
    q = query_pos[:, :, None]
    k = key_pos[None, None, :]
    mask = _visible(q, k, None).unsqueeze(1)  # [b, 1, q_len, k_len]
    sliding = _visible(q, k, window).unsqueeze(1) if window is not None else None
    return mask, sliding


@dataclass(frozen=True, slots=True)
class _PrefillGrid:
    """The ``[rows, q_len]`` grid of a prefill: which cells are real, and where they sit."""

    valid: Tensor  # bool [rows, q_len]
    query_pos: Tensor  # [rows, q_len] position of each cell (padding: 0)
    lengths: Tensor  # [n] new tokens per item
    tables: Tensor  # [rows, width] block tables (padding: scratch)
    with_prefix: bool


def _prefill_grid(
    items: Sequence[PrefillItem], shape: PrefillShape, layout: KVLayout, static: bool
) -> _PrefillGrid:
    _check_tables(items, layout.block_size)
    cached = torch.tensor([it.num_cached_tokens for it in items], dtype=torch.int64)
    lengths = torch.tensor([len(it.token_ids) - it.num_cached_tokens for it in items])
    n, longest = len(items), int(lengths.max())
    rows, q_len = (shape.batch_size, shape.seq_len) if static else (n, longest)
    if n > rows or longest > q_len:
        raise ValueError(f"{n} prefills of up to {longest} new tokens do not fit {shape}")
    with_prefix = bool((cached > 0).any())
    width = max(_blocks_needed(len(it.token_ids), layout.block_size) for it in items)
    if static and with_prefix:
        if shape.num_blocks < width:
            raise ValueError(f"prefill needs {width} blocks per sequence, bucket has {shape}")
        width = shape.num_blocks
    tables = _block_table_tensor(
        [it.block_table for it in items], rows, width, layout.scratch_block
    )
    j = torch.arange(q_len)[None, :]
    valid = torch.zeros(rows, q_len, dtype=torch.bool)
    valid[:n] = j < lengths[:, None]
    start = torch.zeros(rows, 1, dtype=torch.int64)
    start[:n, 0] = cached
    query_pos = torch.where(valid, start + j, 0)
    return _PrefillGrid(valid, query_pos, lengths, tables, with_prefix)


@dataclass(frozen=True, slots=True)
class _TokenRows:
    """A prefill's token rows: ids, positions, KV slots, and how they map to the grid."""

    input_ids: Tensor
    positions: Tensor
    slots: Tensor
    row_starts: Tensor  # first token row of each item
    grid_index: Tensor | None
    token_index: Tensor | None


def _prefill_rows(
    items: Sequence[PrefillItem], grid: _PrefillGrid, layout: KVLayout, static: bool
) -> _TokenRows:
    valid, query_pos, lengths, bs = grid.valid, grid.query_pos, grid.lengths, layout.block_size
    slots = grid.tables.gather(1, query_pos // bs) * bs + query_pos % bs
    slots = torch.where(valid, slots, layout.scratch_slot)
    new_ids = torch.tensor(
        [t for it in items for t in it.token_ids[it.num_cached_tokens :]], dtype=torch.int64
    )
    if static:  # token rows are the padded grid itself
        input_ids = torch.zeros(valid.shape, dtype=torch.int64)
        input_ids[valid] = new_ids
        row_starts = torch.arange(len(items)) * valid.shape[1]
        return _TokenRows(
            input_ids.flatten(), query_pos.flatten(), slots.flatten(), row_starts, None, None
        )
    # Token rows are the real tokens; grid attention regroups them when lengths differ.
    offsets = torch.cumsum(lengths, 0) - lengths
    grid_index = token_index = None
    if not layout.paged and bool((lengths < valid.shape[1]).any()):
        j = torch.arange(valid.shape[1])[None, :]
        grid_index = torch.where(valid, offsets[:, None] + j, 0).flatten()
        token_index = valid.flatten().nonzero().squeeze(1)
    return _TokenRows(new_ids, query_pos[valid], slots[valid], offsets, grid_index, token_index)


def build_prefill(
    items: Sequence[PrefillItem],
    shape: PrefillShape,
    layout: KVLayout,
    *,
    static: bool,
    device: torch.device,
) -> StepInputs:
    """Tensors for prefilling ``items`` in bucket ``shape``.

    Raises:
        ValueError: the items do not fit the bucket, or a block table is too short.
    """
    grid = _prefill_grid(items, shape, layout, static)
    rows = _prefill_rows(items, grid, layout, static)
    total_lens = [len(it.token_ids) for it in items]
    if layout.paged and not static:
        paged = PagedRows(
            block_tables=grid.tables.to(torch.int32),
            seq_lens=torch.tensor(total_lens, dtype=torch.int32),
            query_starts=rows.row_starts.to(torch.int32),
            query_lens=grid.lengths.to(torch.int32),
        )
        attn = _paged_metadata(rows.slots, grid.query_pos, paged)
    else:
        # Keys: whole bucket blocks when shapes are static, else just the longest context.
        k_len = None
        if grid.with_prefix:
            k_len = grid.tables.shape[1] * layout.block_size if static else max(total_lens)
        mask, sliding = _prefill_masks(grid.query_pos, k_len, layout)
        attn = AttentionMetadata(
            slots=rows.slots,
            query_positions=grid.query_pos,
            grid_index=rows.grid_index,
            token_index=rows.token_index,
            kv_rows=_kv_rows(grid.tables, layout, k_len) if k_len is not None else None,
            mask=mask,
            sliding_mask=sliding,
        )
    return _to_device(
        rows.input_ids,
        rows.positions,
        attn,
        logits_index=rows.row_starts + grid.lengths - 1,
        token_offsets=tuple(int(x) for x in rows.row_starts),
        max_seq_len=max(total_lens),
        device=device,
    )


def build_decode(
    items: Sequence[DecodeItem],
    shape: DecodeShape,
    layout: KVLayout,
    *,
    static: bool,
    device: torch.device,
) -> StepInputs:
    """Tensors for one decode step of ``items`` in bucket ``shape``.

    Raises:
        ValueError: the items do not fit the bucket, or a block table is too short.
    """
    bs = layout.block_size
    n = len(items)
    width = max(_blocks_needed(it.position + 1, bs) for it in items)
    rows = shape.batch_size if static else n
    if static:
        if n > rows or width > shape.num_blocks:
            raise ValueError(f"{n} decodes needing {width} blocks do not fit {shape}")
        width = shape.num_blocks
    input_ids = torch.zeros(rows, dtype=torch.int64)
    positions = torch.zeros(rows, dtype=torch.int64)
    slots = torch.full((rows,), layout.scratch_slot, dtype=torch.int64)
    slot_list = []
    for item in items:
        block = item.position // bs
        if block >= len(item.block_table):
            raise ValueError(
                f"sequence {item.request_id}: block table of {len(item.block_table)} blocks "
                f"has no slot for position {item.position}"
            )
        slot_list.append(item.block_table[block] * bs + item.position % bs)
    input_ids[:n] = torch.tensor([it.token_id for it in items], dtype=torch.int64)
    positions[:n] = torch.tensor([it.position for it in items], dtype=torch.int64)
    slots[:n] = torch.tensor(slot_list, dtype=torch.int64)
    tables = _block_table_tensor(
        [it.block_table for it in items], rows, width, layout.scratch_block
    )
    query_pos = positions[:, None]  # [rows, 1]
    if layout.paged:  # padded rows attend to one scratch key
        paged = PagedRows(
            block_tables=tables.to(torch.int32),
            seq_lens=(positions + 1).to(torch.int32),
            query_starts=torch.arange(rows, dtype=torch.int32),
            query_lens=torch.ones(rows, dtype=torch.int32),
        )
        attn = _paged_metadata(slots, query_pos, paged)
    else:
        k_len = width * bs if static else max(it.position for it in items) + 1
        key_pos = torch.arange(k_len)[None, :]
        window = layout.sliding_window
        attn = AttentionMetadata(
            slots=slots,
            query_positions=query_pos,
            grid_index=None,
            token_index=None,
            kv_rows=_kv_rows(tables, layout, k_len),
            mask=_visible(query_pos, key_pos, None)[:, None, None, :],
            sliding_mask=_visible(query_pos, key_pos, window)[:, None, None, :] if window else None,
        )
    return _to_device(
        input_ids,
        positions,
        attn,
        logits_index=torch.arange(n),
        token_offsets=tuple(range(n)),
        max_seq_len=max(it.position + 1 for it in items),
        device=device,
    )


def _paged_metadata(slots: Tensor, query_pos: Tensor, paged: PagedRows) -> AttentionMetadata:
    return AttentionMetadata(
        slots=slots,
        query_positions=query_pos,
        grid_index=None,
        token_index=None,
        kv_rows=None,
        mask=None,
        sliding_mask=None,
        paged=paged,
    )


def _to_device(
    input_ids: Tensor,
    positions: Tensor,
    attn: AttentionMetadata,
    *,
    logits_index: Tensor,
    token_offsets: tuple[int, ...],
    max_seq_len: int,
    device: torch.device,
) -> StepInputs:
    def move(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device, non_blocking=True)

    paged = None
    if attn.paged is not None:
        paged = PagedRows._make(t.to(device, non_blocking=True) for t in attn.paged)
    moved = AttentionMetadata(
        slots=attn.slots.to(device, non_blocking=True),
        query_positions=attn.query_positions.to(device, non_blocking=True),
        grid_index=move(attn.grid_index),
        token_index=move(attn.token_index),
        kv_rows=move(attn.kv_rows),
        mask=move(attn.mask),
        sliding_mask=move(attn.sliding_mask),
        paged=paged,
    )
    return StepInputs(
        input_ids=input_ids.to(device, non_blocking=True),
        positions=positions.to(device, non_blocking=True),
        attn=moved,
        logits_index=logits_index.to(device, non_blocking=True),
        token_offsets=token_offsets,
        max_seq_len=max_seq_len,
    )
