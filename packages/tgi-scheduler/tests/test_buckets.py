from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgi_core.contract import DecodeShape, PrefillShape
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler.buckets import (
    BucketTables,
    all_shapes,
    block_bucket,
    block_buckets,
    blocks_for,
    decode_batch_bucket,
    decode_shape,
    max_blocks_per_seq,
    max_prefill_len,
    prefill_batch_bucket,
    prefill_len_bucket,
    prefill_shape,
    round_up,
)

DEFAULTS = SchedulerSettings()


def test_round_up_and_blocks_for() -> None:
    assert [round_up(n, 8) for n in (1, 7, 8, 9, 16)] == [8, 8, 8, 16, 16]
    assert [blocks_for(n, 128) for n in (1, 128, 129, 4096)] == [1, 1, 2, 32]


def test_batch_buckets_are_multiples_capped_at_max_batch_size() -> None:
    s = SchedulerSettings(max_batch_size=13, batch_bucket_size=8, prefill_batch_bucket_size=4)
    assert [decode_batch_bucket(n, s) for n in (1, 8, 9, 13)] == [8, 8, 13, 13]
    assert [prefill_batch_bucket(n, s) for n in (1, 4, 5, 12, 13)] == [4, 4, 8, 12, 13]


def test_prefill_length_is_padded_and_capped() -> None:
    s = SchedulerSettings(
        max_input_tokens=9000,
        max_total_tokens=10000,
        max_batch_prefill_tokens=9500,
        pad_sequence_to_multiple_of=128,
    )
    assert max_prefill_len(s) == 9500
    assert [prefill_len_bucket(n, s) for n in (1, 128, 129, 9000, 9500)] == [
        128,
        128,
        256,
        9088,
        9500,
    ]


def test_block_ladder_is_powers_of_two_and_one_and_a_half() -> None:
    assert block_buckets(DEFAULTS) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    odd = SchedulerSettings(max_input_tokens=9000, max_total_tokens=10000, block_size=128)
    assert max_blocks_per_seq(odd) == 79
    assert block_buckets(odd)[-3:] == (48, 64, 79)
    assert [block_bucket(n, odd) for n in (1, 5, 7, 65, 79)] == [1, 6, 8, 79, 79]
    with pytest.raises(ValueError, match="exceed"):
        block_bucket(80, odd)


def test_shapes_for_default_settings() -> None:
    shapes = all_shapes(DEFAULTS)
    decode = [s for s in shapes if isinstance(s, DecodeShape)]
    prefill = [s for s in shapes if isinstance(s, PrefillShape)]
    assert len(decode) == 4 * 10  # batch 8, 16, 24, 32 x ten widths
    plain = [s for s in prefill if s.num_blocks == 0]
    # Batch 4 (one to four sequences) runs every length, the last one capped at
    # max_total_tokens - 1; bigger batches only short ones.
    lengths = {*range(128, 4096, 128), 4095}
    assert {s.seq_len for s in plain if s.batch_size == 4} == lengths
    assert {s.seq_len for s in plain if s.batch_size == 32} == {128, 256}
    assert len(plain) == 54
    assert len(set(shapes)) == len(shapes)


def test_prefix_caching_adds_prefill_widths_only_when_on() -> None:
    off = SchedulerSettings(prefix_caching=False)
    on = SchedulerSettings(prefix_caching=True)
    assert all(s.num_blocks == 0 for s in all_shapes(off) if isinstance(s, PrefillShape))
    cached = [s for s in all_shapes(on) if isinstance(s, PrefillShape) and s.num_blocks]
    assert cached
    assert set(all_shapes(off)) < set(all_shapes(on))
    # A cached prefill of up to 128 new tokens still needs 2+ blocks (one cached, one new).
    assert min(s.num_blocks for s in cached if s.seq_len == 128) == 2


def test_arbitrary_limits_work() -> None:
    s = SchedulerSettings(
        max_input_tokens=9000,
        max_total_tokens=10000,
        max_batch_size=13,
        max_batch_prefill_tokens=9000,
        batch_bucket_size=8,
    )
    shapes = set(all_shapes(s))
    assert DecodeShape(13, 79) in shapes
    assert prefill_shape(1, 9000, 0, s) in shapes
    assert prefill_shape(2, 4500, 0, s) in shapes
    # Batch bucket 8 holds 5 to 8 sequences: 5 x 1792 fits the budget, 5 x 1921 does not.
    assert PrefillShape(8, 1920, 0) in shapes
    assert PrefillShape(8, 2048, 0) not in shapes
    assert decode_shape(9, 40, s) == DecodeShape(13, 48)


def small_settings() -> st.SearchStrategy[SchedulerSettings]:
    @st.composite
    def build(draw: st.DrawFn) -> SchedulerSettings:
        max_total = draw(st.integers(2, 300))
        max_input = draw(st.integers(1, max_total - 1))
        return SchedulerSettings(
            max_total_tokens=max_total,
            max_input_tokens=max_input,
            max_batch_prefill_tokens=draw(st.integers(max_input, 3 * max_total)),
            max_batch_size=draw(st.integers(1, 13)),
            batch_bucket_size=draw(st.integers(1, 9)),
            prefill_batch_bucket_size=draw(st.integers(1, 9)),
            pad_sequence_to_multiple_of=draw(st.integers(1, 70)),
            block_size=draw(st.integers(1, 32)),
            prefix_caching=draw(st.booleans()),
            min_prefill_len=draw(st.one_of(st.just(1), st.integers(1, max_input))),
        )

    return build()


def test_a_vision_language_floor_pads_every_prefill_to_base_image_tokens() -> None:
    """TGI-Gaudi's VLM buckets: prefill lengths from BASE_IMAGE_TOKENS up, text prompts too."""
    s = SchedulerSettings(
        max_input_tokens=4096,
        max_total_tokens=8192,
        max_batch_prefill_tokens=16384,
        max_batch_size=4,
        pad_sequence_to_multiple_of=128,
        min_prefill_len=2048,
    )
    assert prefill_len_bucket(10, s) == prefill_len_bucket(2048, s) == 2048
    assert prefill_len_bucket(2049, s) == 2176
    lengths = {shape.seq_len for shape in all_shapes(s) if isinstance(shape, PrefillShape)}
    assert min(lengths) == 2048
    assert lengths == {2048, *range(2176, 8192, 128), 8191}


@settings(max_examples=60, deadline=None)
@given(small_settings())
def test_every_admissible_batch_pads_to_an_enumerated_shape(s: SchedulerSettings) -> None:
    """Brute force: every (n, longest new, width) the admission rule allows is enumerated."""
    shapes = set(all_shapes(s))
    tables = BucketTables(s)
    for n in range(1, s.max_batch_size + 1):
        for new in range(1, max_prefill_len(s) + 1):
            if n * new > s.max_batch_prefill_tokens:
                break
            shape = prefill_shape(n, new, 0, s)
            assert shape in shapes
            assert tables.prefill(n, new, 0) == shape
            min_width = blocks_for(max(new, s.block_size + 1) + 1, s.block_size)
            for width in range(min_width, max_blocks_per_seq(s) + 1):
                cached = prefill_shape(n, new, width, s)
                assert (cached in shapes) == s.prefix_caching
        for width in range(1, max_blocks_per_seq(s) + 1):
            assert decode_shape(n, width, s) in shapes
            assert tables.decode(n, width) == decode_shape(n, width, s)
