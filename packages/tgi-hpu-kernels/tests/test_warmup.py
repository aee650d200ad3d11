"""Warmup plans: full-size buckets where shapes are static, a cheap pass on the CPU."""

from __future__ import annotations

from tgi_core.contract import DecodeShape, PrefillShape
from tgi_hpu_kernels.warmup import DummySize, dummy_plan, dummy_sizes

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


def test_cpu_warmup_runs_every_shape_cheaply(tiny_checkpoint, make_runner):
    runner = make_runner(tiny_checkpoint("qwen2")[0], max_total_tokens=128)
    shapes = [PrefillShape(4, 16), PrefillShape(4, 32, num_blocks=12), DecodeShape(8, 8)]
    report = runner.warmup(shapes)
    assert report.num_shapes == 3
    assert runner.num_unwarmed_shapes == 0
