"""Bucket arithmetic: every padded shape the scheduler can emit, as pure functions.

Gaudi compiles one graph per tensor shape, so every step runs at a padded shape:

- decode batch: rounded up to a multiple of ``batch_bucket_size`` (BATCH_BUCKET_SIZE), capped at
  ``max_batch_size`` (the cap is a bucket of its own);
- prefill batch: rounded up to a multiple of ``prefill_batch_bucket_size``
  (PREFILL_BATCH_BUCKET_SIZE), capped at ``max_batch_size``;
- prefill length (new tokens per sequence): rounded up to a multiple of
  ``pad_sequence_to_multiple_of`` (PAD_SEQUENCE_TO_MULTIPLE_OF), at least ``min_prefill_len``
  (BASE_IMAGE_TOKENS for a vision-language model, 1 otherwise), capped at
  ``max_prefill_len(settings)``;
- decode block-table width (KV blocks per sequence): the "1.5x ladder" 1, 2, 3, 4, 6, 8, 12,
  16, 24, ... (powers of two and 1.5 times powers of two), capped at
  ``ceil(max_total_tokens / block_size)``: a width is padded by less than 50 %, with about
  ``2 * log2(max)`` rungs. Decode reads the whole context every step, so its padding is
  paid on every token.
- prefill block-table width (only when a sequence reuses cached KV): powers of two, with the
  same cap. A prefill's cost is dominated by its new tokens, so a coarser ladder (half the
  rungs, hence half the cached-prefill shapes) costs little.

``all_shapes`` enumerates every shape the scheduler can produce under the settings, and only
those; warmup compiles exactly that set. The scheduler pads with the same functions (through
``BucketTables``, lookup lists built from them), so a plan's shape is always in the set.

Nothing here knows about requests, blocks or time: sizes in, sizes out.
"""

from __future__ import annotations

from tgi_core.contract import DecodeShape, PrefillShape, Shape
from tgi_core.settings.slices import SchedulerSettings

__all__ = [
    "BucketTables",
    "all_shapes",
    "block_bucket",
    "block_buckets",
    "blocks_for",
    "decode_batch_bucket",
    "decode_shape",
    "max_blocks_per_seq",
    "max_prefill_len",
    "prefill_batch_bucket",
    "prefill_block_bucket",
    "prefill_block_buckets",
    "prefill_len_bucket",
    "prefill_shape",
    "round_up",
]


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (``multiple`` >= 1)."""
    return -(-n // multiple) * multiple


def blocks_for(num_tokens: int, block_size: int) -> int:
    """How many KV blocks hold ``num_tokens`` token slots."""
    return -(-num_tokens // block_size)


def max_blocks_per_seq(settings: SchedulerSettings) -> int:
    """The widest block table: a sequence never holds more than ``max_total_tokens`` slots."""
    return blocks_for(settings.max_total_tokens, settings.block_size)


def max_prefill_len(settings: SchedulerSettings) -> int:
    """The most new tokens one sequence brings to a prefill.

    A prompt has at most ``max_input_tokens``; a sequence resumed after a preemption brings its
    whole history, which the scheduler keeps within ``max_total_tokens - 1`` and within the
    prefill budget (it never preempts a sequence it could not prefill again).
    """
    return min(settings.max_total_tokens - 1, settings.max_batch_prefill_tokens)


def decode_batch_bucket(batch_size: int, settings: SchedulerSettings) -> int:
    return min(round_up(batch_size, settings.batch_bucket_size), settings.max_batch_size)


def prefill_batch_bucket(batch_size: int, settings: SchedulerSettings) -> int:
    return min(round_up(batch_size, settings.prefill_batch_bucket_size), settings.max_batch_size)


def prefill_len_bucket(seq_len: int, settings: SchedulerSettings) -> int:
    padded = max(round_up(seq_len, settings.pad_sequence_to_multiple_of), settings.min_prefill_len)
    return min(padded, max_prefill_len(settings))


def block_buckets(settings: SchedulerSettings) -> tuple[int, ...]:
    """The rungs of the block-table width ladder, ascending, the last one being the cap."""
    cap = max_blocks_per_seq(settings)
    rungs = {cap}
    power = 1
    while power < cap:
        rungs.add(power)
        if power >= 2 and power * 3 // 2 < cap:
            rungs.add(power * 3 // 2)
        power *= 2
    return tuple(sorted(rungs))


def prefill_block_buckets(settings: SchedulerSettings) -> tuple[int, ...]:
    """The rungs of the cached-prefill width ladder: powers of two below the cap, then the cap."""
    cap = max_blocks_per_seq(settings)
    return (*(1 << k for k in range(cap.bit_length()) if 1 << k < cap), cap)


def _bucket(value: int, rungs: tuple[int, ...]) -> int:
    for rung in rungs:
        if rung >= value:
            return rung
    raise ValueError(f"{value} blocks exceed the widest block table ({rungs[-1]})")


def block_bucket(num_blocks: int, settings: SchedulerSettings) -> int:
    """The decode width rung holding ``num_blocks`` (1 <= num_blocks <= the cap)."""
    return _bucket(num_blocks, block_buckets(settings))


def prefill_block_bucket(num_blocks: int, settings: SchedulerSettings) -> int:
    """The cached-prefill width rung holding ``num_blocks`` (1 <= num_blocks <= the cap)."""
    return _bucket(num_blocks, prefill_block_buckets(settings))


def decode_shape(batch_size: int, num_blocks: int, settings: SchedulerSettings) -> DecodeShape:
    """The padded shape of a decode of ``batch_size`` sequences, widest table ``num_blocks``."""
    return DecodeShape(
        decode_batch_bucket(batch_size, settings), block_bucket(num_blocks, settings)
    )


def prefill_shape(
    batch_size: int, seq_len: int, num_blocks: int, settings: SchedulerSettings
) -> PrefillShape:
    """The padded shape of a prefill; ``num_blocks`` is 0 unless a sequence reuses cached KV."""
    width = prefill_block_bucket(num_blocks, settings) if num_blocks else 0
    return PrefillShape(
        prefill_batch_bucket(batch_size, settings), prefill_len_bucket(seq_len, settings), width
    )


def _smallest_inputs(upper: int, bucket_of: dict[int, int]) -> dict[int, int]:
    """For each bucket value, the smallest input in 1..upper that pads to it."""
    smallest: dict[int, int] = {}
    for n in range(1, upper + 1):
        smallest.setdefault(bucket_of[n], n)
    return smallest


def _prefill_shapes(settings: SchedulerSettings) -> list[PrefillShape]:
    """(batch, length) pairs some admissible prefill pads to, with widths when caching is on.

    The scheduler admits ``n`` sequences whose longest new part is ``l`` only when
    ``n * l <= max_batch_prefill_tokens``, so a pair of buckets is reachable exactly when the
    smallest ``n`` and ``l`` that pad to them pass that check.
    """
    max_len = max_prefill_len(settings)
    batch_of = {n: prefill_batch_bucket(n, settings) for n in range(1, settings.max_batch_size + 1)}
    len_of = {n: prefill_len_bucket(n, settings) for n in range(1, max_len + 1)}
    smallest_batch = _smallest_inputs(settings.max_batch_size, batch_of)
    smallest_len = _smallest_inputs(max_len, len_of)
    ladder = prefill_block_buckets(settings)
    # A sequence reusing cached KV has at least one full cached block and one new token.
    min_cached_width = blocks_for(settings.block_size + 2, settings.block_size)
    shapes: list[PrefillShape] = []
    for batch, n_min in sorted(smallest_batch.items()):
        for length, l_min in sorted(smallest_len.items()):
            if n_min * l_min > settings.max_batch_prefill_tokens:
                continue
            shapes.append(PrefillShape(batch, length, 0))
            min_width = max(min_cached_width, blocks_for(l_min + 1, settings.block_size))
            if not settings.prefix_caching or min_width > max_blocks_per_seq(settings):
                continue
            lowest = prefill_block_bucket(min_width, settings)
            shapes.extend(PrefillShape(batch, length, w) for w in ladder if w >= lowest)
    return shapes


def all_shapes(settings: SchedulerSettings) -> tuple[Shape, ...]:
    """Every shape the scheduler can emit under ``settings``: prefill shapes, then decode shapes.

    With ``prefix_caching`` on, prefill shapes also come with every block-table width a batch
    that reuses cached KV can pad to; with it off, every prefill shape has ``num_blocks == 0``.
    """
    decode_batches = sorted(
        {decode_batch_bucket(n, settings) for n in range(1, settings.max_batch_size + 1)}
    )
    decode = [DecodeShape(b, w) for b in decode_batches for w in block_buckets(settings)]
    return (*_prefill_shapes(settings), *decode)


class BucketTables:
    """The bucket functions as lookup lists, for the scheduler's hot path.

    Built once from the same pure functions, so a shape padded through a table is the shape
    the function would give. Shapes are interned: one object per distinct shape.
    """

    __slots__ = (
        "_decode_batch",
        "_decode_shapes",
        "_prefill_batch",
        "_prefill_len",
        "_prefill_shapes",
        "_prefill_width",
        "_width",
    )

    def __init__(self, settings: SchedulerSettings) -> None:
        batch_range = range(settings.max_batch_size + 1)
        self._decode_batch = [decode_batch_bucket(max(n, 1), settings) for n in batch_range]
        self._prefill_batch = [prefill_batch_bucket(max(n, 1), settings) for n in batch_range]
        len_range = range(max_prefill_len(settings) + 1)
        self._prefill_len = [prefill_len_bucket(max(n, 1), settings) for n in len_range]
        width_range = range(max_blocks_per_seq(settings) + 1)
        self._width = [block_bucket(max(n, 1), settings) for n in width_range]
        self._prefill_width = [prefill_block_bucket(max(n, 1), settings) for n in width_range]
        self._decode_shapes: dict[tuple[int, int], DecodeShape] = {}
        self._prefill_shapes: dict[tuple[int, int, int], PrefillShape] = {}

    def decode(self, batch_size: int, num_blocks: int) -> DecodeShape:
        key = (self._decode_batch[batch_size], self._width[num_blocks])
        shape = self._decode_shapes.get(key)
        if shape is None:
            shape = self._decode_shapes[key] = DecodeShape(*key)
        return shape

    def prefill(self, batch_size: int, seq_len: int, num_blocks: int) -> PrefillShape:
        width = self._prefill_width[num_blocks] if num_blocks else 0
        key = (self._prefill_batch[batch_size], self._prefill_len[seq_len], width)
        shape = self._prefill_shapes.get(key)
        if shape is None:
            shape = self._prefill_shapes[key] = PrefillShape(*key)
        return shape
