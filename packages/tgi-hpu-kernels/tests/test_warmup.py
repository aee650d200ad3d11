"""Warmup plans: every bucket at full size where shapes are static; on the packed CPU, which
compiles nothing, a few representative shapes, the other buckets counting as warmed."""

from __future__ import annotations

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_hpu_kernels.warmup import DummySize, dummy_plan, dummy_sizes, representative_shapes

SHAPES = [
    PrefillShape(4, 128),
    PrefillShape(4, 256, num_blocks=4),
    PrefillShape(8, 128),
    DecodeShape(8, 2),
    DecodeShape(16, 2),
    DecodeShape(8, 4),
]


def test_static_devices_fill_every_bucket():
    sizes = dummy_sizes(SHAPES, static=True)
    assert all(sizes[s] == DummySize(s.batch_size, full_length=True) for s in SHAPES)
    plan = dummy_plan(PrefillShape(4, 256, num_blocks=4), block_size=128, num_kv_blocks=10)
    assert len(plan.prefill) == 4
    first = plan.prefill[0]
    assert (len(first.token_ids), first.num_cached_tokens) == (512, 256)
    assert all(0 <= b < 10 for item in plan.prefill for b in item.block_table)


def test_cpu_fills_only_the_largest_buckets():
    sizes = dummy_sizes(SHAPES, static=False)
    assert sizes[PrefillShape(4, 256, num_blocks=4)] == DummySize(1, full_length=True)
    assert sizes[DecodeShape(16, 2)] == DummySize(16, full_length=True)
    small = [s for s in SHAPES if s not in (PrefillShape(4, 256, 4), DecodeShape(16, 2))]
    assert all(sizes[s] == DummySize(1, full_length=False) for s in small)
    plan = dummy_plan(DecodeShape(8, 4), block_size=128, num_kv_blocks=10, size=sizes[small[-1]])
    assert [(d.position, d.block_table) for d in plan.decode] == [(0, (0,))]


def test_cpu_warmup_runs_every_kind_of_shape(tiny_checkpoint, make_runner):
    runner = make_runner(tiny_checkpoint("qwen2")[0], max_total_tokens=128)
    shapes = [PrefillShape(4, 16), PrefillShape(4, 32, num_blocks=12), DecodeShape(8, 8)]
    report = runner.warmup(shapes)
    assert report.num_shapes == 3
    assert runner.num_unwarmed_shapes == 0


# A default-like grid: prefills of 4..16 rows x 8..32 tokens, with and without a cached
# prefix; decodes of 4..16 rows x 2..8 blocks (block size 4, 32 tokens in all).
GRID = [
    *(PrefillShape(b, n) for b in (4, 8, 12, 16) for n in (8, 16, 24, 32)),
    *(PrefillShape(b, n, num_blocks=k) for b in (4, 8) for n in (8, 16) for k in (2, 4)),
    PrefillShape(4, 32, num_blocks=8),  # as long as the longest, over a prefix: not the one
    *(DecodeShape(b, k) for b in (4, 8, 12, 16) for k in (2, 4, 8)),
]
PICKED = [
    PrefillShape(4, 8),  # shortest prefill: the small-prompt path
    PrefillShape(4, 32),  # longest, no prefix: the largest activations, at full length
    PrefillShape(4, 8, num_blocks=2),  # over a cached prefix: the paged prefill path
    DecodeShape(4, 2),  # smallest decode: one row
    DecodeShape(16, 8),  # largest decode: every row at full length
]


def test_representative_shapes_cover_each_kind_and_the_extremes():
    assert representative_shapes(GRID) == PICKED
    assert representative_shapes(PICKED) == PICKED
    assert representative_shapes([DecodeShape(8, 2)]) == [DecodeShape(8, 2)]


def test_packed_cpu_warms_representatives_and_counts_the_other_buckets_warmed(
    tiny_checkpoint, make_runner
):
    runner = make_runner(tiny_checkpoint("llama")[0], max_total_tokens=32)
    seen = []
    report = runner.warmup(GRID, lambda done, total, shape: seen.append((done, total, shape)))
    assert report.num_shapes == len(PICKED)  # what it ran, not the buckets
    assert seen == [(i + 1, len(PICKED), s) for i, s in enumerate(PICKED)]
    # Buckets warmup did not run: nothing compiles on the CPU, so they count as warmed.
    prompt = PrefillItem(
        request_id=1,
        token_ids=(4, 5, 6),
        num_prompt_tokens=3,
        num_cached_tokens=0,
        block_table=(0,),
        sampling=SamplingParams(),
    )
    runner.execute(StepPlan(step_id=0, shape=PrefillShape(8, 16), prefill=(prompt,)))
    decode = DecodeItem(request_id=1, token_id=9, position=3, block_table=(0,))
    runner.execute(StepPlan(step_id=1, shape=DecodeShape(8, 4), decode=(decode,)))
    assert runner.num_unwarmed_shapes == 0
    # A shape outside the buckets is still counted (the scheduler planned a shape it
    # never asked warmup for).
    decode = DecodeItem(request_id=1, token_id=9, position=4, block_table=(0, 1))
    runner.execute(StepPlan(step_id=2, shape=DecodeShape(32, 4), decode=(decode,)))
    assert runner.unwarmed_shapes == {DecodeShape(32, 4)}
