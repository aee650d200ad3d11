"""How plans become tensors: padding reads/writes only the scratch block, bucket checks."""

from __future__ import annotations

import pytest
import torch

from tgi_core.contract import DecodeItem, DecodeShape, PrefillItem, PrefillShape, SamplingParams
from tgi_hpu_kernels.step_inputs import KVLayout, build_decode, build_prefill

LAYOUT = KVLayout(block_size=4, scratch_block=10, num_kv_heads=2)
CPU = torch.device("cpu")


def _item(request_id: int, length: int, table: tuple[int, ...], cached: int = 0) -> PrefillItem:
    return PrefillItem(
        request_id=request_id,
        token_ids=tuple(range(1, length + 1)),
        num_prompt_tokens=length,
        num_cached_tokens=cached,
        block_table=table,
        sampling=SamplingParams(),
    )


def test_static_prefill_pads_to_the_bucket_and_writes_padding_to_scratch():
    items = [_item(0, 3, (2,)), _item(1, 6, (5, 7))]
    inputs = build_prefill(items, PrefillShape(4, 8), LAYOUT, static=True, device=CPU)
    assert inputs.input_ids.shape == (32,)
    slots = inputs.attn.slots.view(4, 8)
    assert slots[0, :3].tolist() == [8, 9, 10]
    assert slots[1, :6].tolist() == [20, 21, 22, 23, 28, 29]
    scratch = LAYOUT.scratch_slot
    assert set(slots[0, 3:].tolist()) == set(slots[2:].flatten().tolist()) == {scratch}
    assert inputs.logits_index.tolist() == [2, 13]
    assert inputs.attn.grid_index is None and inputs.attn.mask is None


def test_packed_prefill_has_only_real_tokens():
    items = [_item(0, 3, (2,)), _item(1, 6, (5, 7))]
    inputs = build_prefill(items, PrefillShape(4, 8), LAYOUT, static=False, device=CPU)
    assert inputs.input_ids.tolist() == [1, 2, 3, 1, 2, 3, 4, 5, 6]
    assert inputs.attn.query_positions.shape == (2, 6)
    assert inputs.attn.grid_index.tolist() == [0, 1, 2, 0, 0, 0, 3, 4, 5, 6, 7, 8]
    assert inputs.attn.token_index.tolist() == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert inputs.logits_index.tolist() == [2, 8]
    same = build_prefill(
        [_item(0, 3, (2,))] * 2, PrefillShape(4, 8), LAYOUT, static=False, device=CPU
    )
    assert same.attn.grid_index is None and same.attn.token_index is None


def test_prefix_prefill_gathers_cached_blocks_under_a_mask():
    items = [_item(0, 6, (5, 7), cached=4)]
    inputs = build_prefill(items, PrefillShape(1, 4, num_blocks=2), LAYOUT, static=True, device=CPU)
    assert inputs.attn.slots.tolist() == [28, 29, 40, 40]
    assert inputs.attn.query_positions.tolist() == [[4, 5, 0, 0]]
    mask = inputs.attn.mask[0, 0]
    assert mask.shape == (4, 8)
    assert mask[0].tolist() == [True] * 5 + [False] * 3
    assert mask[2].tolist() == [True] + [False] * 7  # padding sees one (scratch) key
    rows = inputs.attn.kv_rows.view(2, 8)  # (head, key) rows of the [slots * heads, d] view
    assert rows[0].tolist() == [40, 42, 44, 46, 56, 58, 60, 62]
    assert rows[1].tolist() == [r + 1 for r in rows[0].tolist()]


def test_decode_pads_rows_and_block_tables_with_scratch():
    items = [DecodeItem(request_id=0, token_id=7, position=5, block_table=(3, 4))]
    window = KVLayout(block_size=4, scratch_block=10, num_kv_heads=1, sliding_window=3)
    inputs = build_decode(items, DecodeShape(2, 3), window, static=True, device=CPU)
    assert inputs.input_ids.tolist() == [7, 0]
    assert inputs.attn.slots.tolist() == [17, 40]
    assert inputs.attn.kv_rows.view(2, 12)[1].tolist() == list(range(40, 44)) * 3
    assert inputs.attn.mask[0, 0, 0].tolist() == [True] * 6 + [False] * 6
    assert inputs.attn.sliding_mask[0, 0, 0].tolist() == [False] * 3 + [True] * 3 + [False] * 6


def test_plans_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        build_prefill([_item(0, 9, (1, 2, 3))], PrefillShape(1, 8), LAYOUT, static=True, device=CPU)
    with pytest.raises(ValueError, match="cannot hold 9 tokens"):
        build_prefill([_item(0, 9, (1, 2))], PrefillShape(1, 16), LAYOUT, static=True, device=CPU)
    late = DecodeItem(request_id=0, token_id=1, position=8, block_table=(1, 2))
    with pytest.raises(ValueError, match="no slot for position 8"):
        build_decode([late], DecodeShape(1, 4), LAYOUT, static=False, device=CPU)
    with pytest.raises(ValueError, match="do not fit"):
        build_decode([late], DecodeShape(1, 2), LAYOUT, static=True, device=CPU)


def test_block_ids_outside_the_pool_are_refused():
    outside = DecodeItem(request_id=0, token_id=1, position=1, block_table=(LAYOUT.scratch_block,))
    with pytest.raises(ValueError, match=r"leaves the pool \[0, 10\)"):
        build_decode([outside], DecodeShape(1, 1), LAYOUT, static=True, device=CPU)


PAGED = KVLayout(block_size=4, scratch_block=10, num_kv_heads=2, paged=True)


def test_paged_prefill_describes_sequences_instead_of_a_grid():
    items = [_item(0, 3, (2,)), _item(1, 6, (5, 7), cached=4)]
    inputs = build_prefill(items, PrefillShape(4, 8, num_blocks=2), PAGED, static=False, device=CPU)
    assert inputs.input_ids.tolist() == [1, 2, 3, 5, 6]
    assert inputs.attn.slots.tolist() == [8, 9, 10, 28, 29]
    paged = inputs.attn.paged
    assert paged.block_tables.tolist() == [[2, 10], [5, 7]]
    assert paged.seq_lens.tolist() == [3, 6]
    assert paged.query_starts.tolist() == [0, 3]
    assert paged.query_lens.tolist() == [3, 2]
    assert all(t.dtype == torch.int32 for t in paged)
    attn = inputs.attn
    assert attn.kv_rows is None and attn.mask is None and attn.grid_index is None
    assert inputs.logits_index.tolist() == [2, 4]


def test_paged_decode_pads_rows_with_one_scratch_key():
    items = [DecodeItem(request_id=0, token_id=7, position=5, block_table=(3, 4))]
    inputs = build_decode(items, DecodeShape(2, 3), PAGED, static=True, device=CPU)
    paged = inputs.attn.paged
    assert paged.block_tables.tolist() == [[3, 4, 10], [10, 10, 10]]
    assert paged.seq_lens.tolist() == [6, 1]
    assert paged.query_starts.tolist() == [0, 1]
    assert paged.query_lens.tolist() == [1, 1]
    assert inputs.attn.slots.tolist() == [17, 40]
    static_prefill = build_prefill(
        [_item(0, 3, (2,))], PrefillShape(1, 4), PAGED, static=True, device=CPU
    )
    assert static_prefill.attn.paged is None  # padded grids keep the torch path
