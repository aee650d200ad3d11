"""Warmup: run every bucket shape once with dummy sequences, before serving.

On HPU this compiles (and, with ENABLE_HPU_GRAPH, captures) one graph per shape, so no shape
compiles while serving; on CUDA it captures the decode graphs. Both pad every plan to its
bucket, so each shape runs at full size.

The CPU runs plans packed: its cost follows the real tokens, not the bucket, and it has
nothing to compile, so a bucket's first step costs what any other does. It warms what a
first step would otherwise pay for (``representative_shapes``): the largest decode bucket
at full size and the longest prefill with one full-length prompt (the allocator's largest
blocks, and proof that the largest steps fit in memory), then one short step of each other
kind (a one-row decode, a short prefill, a prefill over a cached prefix) so that every
native kernel and path has run once. A few seconds, where one short step of each of the ~300
default buckets took two minutes (eager steps of ~0.4 s each on two cores).

The dummy plans use token 0 and block ids taken round-robin from the pool: their KV is
garbage that no real sequence reads, since no sequence exists yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    Shape,
    StepPlan,
    WarmupProgress,
    WarmupReport,
)

__all__ = [
    "DummySize",
    "dummy_plan",
    "dummy_sizes",
    "representative_shapes",
    "run_warmup",
    "shapes_to_warm",
]

logger = logging.getLogger(__name__)

_GREEDY = SamplingParams()


def _table(index: int, num_blocks: int, num_kv_blocks: int) -> tuple[int, ...]:
    first = index * num_blocks
    return tuple((first + j) % num_kv_blocks for j in range(num_blocks))


@dataclass(frozen=True, slots=True)
class DummySize:
    """How much of a bucket a dummy plan fills."""

    num_sequences: int
    full_length: bool  # as long as the bucket allows; else one new token (and one cached)


def dummy_sizes(shapes: Sequence[Shape], *, static: bool) -> dict[Shape, DummySize]:
    """The dummy size of every shape (see the module docstring)."""
    if static:
        return {s: DummySize(s.batch_size, full_length=True) for s in shapes}
    sizes = {s: DummySize(1, full_length=False) for s in shapes}
    decodes = [s for s in shapes if isinstance(s, DecodeShape)]
    prefills = [s for s in shapes if not isinstance(s, DecodeShape)]
    if decodes:
        largest = max(decodes, key=lambda s: (s.batch_size * s.num_blocks, s.batch_size))
        sizes[largest] = DummySize(largest.batch_size, full_length=True)
    if prefills:
        longest = max(prefills, key=_longest_first)
        sizes[longest] = DummySize(1, full_length=True)
    return sizes


def _longest_first(shape: PrefillShape) -> tuple[int, int]:
    # Of the longest prefills, one without a cached prefix: the plain prompt a long request
    # sends; the short cached-prefix dummy already runs the prefix path once.
    return shape.seq_len, -shape.num_blocks


def representative_shapes(shapes: Sequence[Shape]) -> list[Shape]:
    """The shapes a device that compiles nothing warms (see the module docstring), in
    ``shapes``' order: the largest and smallest decode, the longest and shortest prefill,
    and the shortest prefill over a cached prefix."""
    decodes = [s for s in shapes if isinstance(s, DecodeShape)]
    prefills = [s for s in shapes if not isinstance(s, DecodeShape)]
    cached = [s for s in prefills if s.num_blocks]
    picked: set[Shape] = set()
    if decodes:
        picked.add(max(decodes, key=lambda s: (s.batch_size * s.num_blocks, s.batch_size)))
        picked.add(min(decodes, key=lambda s: (s.batch_size, s.num_blocks)))
    if prefills:
        picked.add(max(prefills, key=_longest_first))
        picked.add(min(prefills, key=lambda s: (s.num_blocks, s.batch_size, s.seq_len)))
    if cached:
        picked.add(min(cached, key=lambda s: (s.batch_size, s.seq_len, s.num_blocks)))
    return [s for s in shapes if s in picked]


def shapes_to_warm(shapes: Sequence[Shape], *, static: bool) -> list[Shape]:
    """Every shape where shapes are static (each one compiles), else the representative
    ones (logged)."""
    if static:
        return list(shapes)
    run = representative_shapes(shapes)
    logger.info(
        "Warming %d representative shapes of %d buckets: packed CPU steps compile nothing, so "
        "the others count as warmed",
        len(run),
        len(shapes),
    )
    return run


def dummy_plan(
    shape: Shape,
    *,
    block_size: int,
    num_kv_blocks: int,
    size: DummySize | None = None,
    step_id: int = -1,
) -> StepPlan:
    """A dummy plan of ``shape``; by default every row real and as long as the bucket."""
    size = size or DummySize(shape.batch_size, full_length=True)
    request_ids = [-1 - i for i in range(size.num_sequences)]
    if isinstance(shape, DecodeShape):
        position = shape.num_blocks * block_size - 1 if size.full_length else 0
        num_blocks = position // block_size + 1
        decode = tuple(
            DecodeItem(
                request_id=s,
                token_id=0,
                position=position,
                block_table=_table(i, num_blocks, num_kv_blocks),
            )
            for i, s in enumerate(request_ids)
        )
        return StepPlan(step_id=step_id, shape=shape, decode=decode)
    if not size.full_length:
        total, new = (2, 1) if shape.num_blocks else (1, 1)
    elif shape.num_blocks:  # prefill over a cached prefix: fill the bucket's blocks
        total = shape.num_blocks * block_size
        new = min(shape.seq_len, total - 1)
    else:
        total = new = shape.seq_len
    num_blocks = -(-(total + 1) // block_size)
    prefill = tuple(
        PrefillItem(
            request_id=s,
            token_ids=(0,) * total,
            num_prompt_tokens=total,
            num_cached_tokens=total - new,
            block_table=_table(i, num_blocks, num_kv_blocks),
            sampling=_GREEDY,
        )
        for i, s in enumerate(request_ids)
    )
    return StepPlan(step_id=step_id, shape=shape, prefill=prefill)


def run_warmup(
    shapes: Sequence[Shape],
    run_shape: Callable[[Shape], None],
    *,
    progress: WarmupProgress | None,
    num_kv_blocks: int,
    num_graphs: Callable[[], int],
) -> WarmupReport:
    """Runs ``run_shape`` for every shape with a progress bar, then logs a summary."""
    start = time.perf_counter()
    total = len(shapes)
    with tqdm(total=total, desc="Warmup", unit="shape", disable=None) as bar:
        for done, shape in enumerate(shapes, start=1):
            shape_start = time.perf_counter()
            run_shape(shape)
            logger.debug("warmup %s in %.2fs", shape, time.perf_counter() - shape_start)
            bar.update(1)
            if progress is not None:
                progress(done, total, shape)
    seconds = time.perf_counter() - start
    report = WarmupReport(
        num_shapes=total, seconds=seconds, num_kv_blocks=num_kv_blocks, num_graphs=num_graphs()
    )
    logger.info(
        "Warmup done: %d shapes (%d prefill, %d decode) in %.1fs, %d KV blocks, %d graphs",
        total,
        sum(1 for s in shapes if not isinstance(s, DecodeShape)),
        sum(1 for s in shapes if isinstance(s, DecodeShape)),
        seconds,
        num_kv_blocks,
        report.num_graphs,
    )
    return report
