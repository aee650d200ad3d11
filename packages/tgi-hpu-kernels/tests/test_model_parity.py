"""Our logits against transformers' on tiny random models of every family, in float32.

Sequences span many 4-token blocks scattered through the pool, prefill runs a batch of mixed
lengths, then 32 teacher-forced decode steps; a prefix-cache prefill reuses another
sequence's blocks. Three paths: packed rows with the CPU's native kernels (the default),
packed rows with torch ops only (where no compiler exists), and the static path that HPU and
CUDA use (padded to the bucket, torch-op prefill). Every logit must match transformers
within 1e-4.
"""

from __future__ import annotations

import random
from typing import get_args

import pytest
import torch

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_hpu_kernels.testing import Family

FAMILIES = list(get_args(Family))  # bloom: ALiBi, served by the recomputing fallback
BLOCK_SIZE = 4
NUM_KV_BLOCKS = 64
PROMPT_LENS = (5, 11, 17)
NUM_DECODE = 32
ATOL = 1e-4


def _reference(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()  # [len, vocab]


def _tables(lengths: list[int], seed: int = 0) -> list[tuple[int, ...]]:
    """Scattered block ids (block 0 included, so padding writing there would show)."""
    pool = list(range(1, NUM_KV_BLOCKS))
    random.Random(seed).shuffle(pool)
    pool.insert(0, 0)
    tables = []
    for length in lengths:
        count = -(-(length + 1) // BLOCK_SIZE)
        tables.append(tuple(pool[:count]))
        pool = pool[count:]
    return tables


def _prefill_item(
    request_id: int, tokens: list[int], table: tuple[int, ...], cached: int = 0
) -> PrefillItem:
    return PrefillItem(
        request_id=request_id,
        token_ids=tuple(tokens),
        num_prompt_tokens=len(tokens),
        num_cached_tokens=cached,
        block_table=table,
        sampling=SamplingParams(),
    )


# mode -> make_runner keywords
MODES = {
    "packed": {"static": False},
    "torch-ops": {"static": False, "native": False},
    "static": {"static": True},
}


def _decode_bucket(positions: list[int]) -> DecodeShape:
    needed = max(-(-(p + 1) // BLOCK_SIZE) for p in positions)
    return DecodeShape(batch_size=4, num_blocks=-(-needed // 4) * 4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_decode_match_transformers(tiny_checkpoint, make_runner, family, mode):
    folder, hf_model = tiny_checkpoint(family)
    runner = make_runner(folder, num_kv_blocks=NUM_KV_BLOCKS, **MODES[mode])
    gen = torch.Generator().manual_seed(1)
    sequences = [
        torch.randint(3, 128, (p + NUM_DECODE,), generator=gen).tolist() for p in PROMPT_LENS
    ]
    references = [_reference(hf_model, s) for s in sequences]
    tables = _tables([len(s) for s in sequences])

    prefill = tuple(
        _prefill_item(i, s[:p], t)
        for i, (s, p, t) in enumerate(zip(sequences, PROMPT_LENS, tables, strict=True))
    )
    logits = runner.compute_logits(StepPlan(step_id=0, shape=PrefillShape(4, 24), prefill=prefill))
    for i, p in enumerate(PROMPT_LENS):
        torch.testing.assert_close(logits[i], references[i][p - 1], atol=ATOL, rtol=0)

    for step in range(NUM_DECODE):
        positions = [p + step for p in PROMPT_LENS]
        decode = tuple(
            DecodeItem(
                request_id=i, token_id=sequences[i][pos], position=pos, block_table=tables[i]
            )
            for i, pos in enumerate(positions)
        )
        plan = StepPlan(step_id=step + 1, shape=_decode_bucket(positions), decode=decode)
        logits = runner.compute_logits(plan)
        for i, pos in enumerate(positions):
            torch.testing.assert_close(
                logits[i], references[i][pos], atol=ATOL, rtol=0, msg=f"step {step} seq {i}"
            )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_cached_prefill_matches_transformers(tiny_checkpoint, make_runner, family, mode):
    folder, hf_model = tiny_checkpoint(family)
    runner = make_runner(folder, num_kv_blocks=NUM_KV_BLOCKS, **MODES[mode])
    gen = torch.Generator().manual_seed(2)
    first = torch.randint(3, 128, (14,), generator=gen).tolist()
    # `second` shares first's first 3 blocks (12 tokens) and adds 9 of its own.
    second = first[:12] + torch.randint(3, 128, (9,), generator=gen).tolist()
    third = torch.randint(3, 128, (6,), generator=gen).tolist()
    first_table, extra, third_table = _tables([len(first), 12, len(third)], seed=3)
    second_table = first_table[:3] + extra

    runner.compute_logits(
        StepPlan(
            step_id=0, shape=PrefillShape(4, 16), prefill=(_prefill_item(0, first, first_table),)
        )
    )
    plan = StepPlan(
        step_id=1,
        shape=PrefillShape(batch_size=4, seq_len=16, num_blocks=8),
        prefill=(
            _prefill_item(1, second[:18], second_table, cached=12),
            _prefill_item(2, third, third_table),
        ),
    )
    logits = runner.compute_logits(plan)
    torch.testing.assert_close(logits[0], _reference(hf_model, second[:18])[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], _reference(hf_model, third)[-1], atol=ATOL, rtol=0)

    reference = _reference(hf_model, second)
    for position in range(18, len(second)):
        item = DecodeItem(
            request_id=1, token_id=second[position], position=position, block_table=second_table
        )
        logits = runner.compute_logits(
            StepPlan(step_id=position, shape=DecodeShape(4, 8), decode=(item,))
        )
        torch.testing.assert_close(logits[0], reference[position], atol=ATOL, rtol=0)


def _logits_of(runner, sequences: list[list[int]], num_decode: int) -> torch.Tensor:
    """Prefill of ``PROMPT_LENS`` tokens of each sequence, then ``num_decode`` teacher-forced
    decode steps; every step's logits, stacked."""
    tables = _tables([len(s) for s in sequences])
    prefill = tuple(
        _prefill_item(i, s[:p], t)
        for i, (s, p, t) in enumerate(zip(sequences, PROMPT_LENS, tables, strict=True))
    )
    steps = [runner.compute_logits(StepPlan(step_id=0, shape=PrefillShape(4, 24), prefill=prefill))]
    for step in range(num_decode):
        positions = [p + step for p in PROMPT_LENS]
        decode = tuple(
            DecodeItem(
                request_id=i, token_id=sequences[i][pos], position=pos, block_table=tables[i]
            )
            for i, pos in enumerate(positions)
        )
        plan = StepPlan(step_id=step + 1, shape=_decode_bucket(positions), decode=decode)
        steps.append(runner.compute_logits(plan))
    return torch.stack(steps)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_native_kernels_agree_with_torch_ops(tiny_checkpoint, make_runner, family):
    """In bf16 the native linear, attention and fused elementwise kernels all run; their
    logits stay within bf16 rounding of the torch-op path's."""
    folder, _ = tiny_checkpoint(family)
    gen = torch.Generator().manual_seed(4)
    sequences = [torch.randint(3, 128, (p + 8,), generator=gen).tolist() for p in PROMPT_LENS]
    logits = [
        _logits_of(
            make_runner(folder, dtype="bfloat16", native=native, num_kv_blocks=NUM_KV_BLOCKS),
            sequences,
            num_decode=8,
        )
        for native in (True, False)
    ]
    scale = float(logits[1].abs().max())
    torch.testing.assert_close(logits[0], logits[1], atol=0.03 * scale, rtol=0)


@pytest.mark.parametrize("family", ["qwen2", "phi3"])  # biases, windows; partial rotary
def test_bfloat16_fused_stack_gives_the_per_op_bits(tiny_checkpoint, make_runner, family):
    """Decode steps (and prefills within the fused row limit: 12 rows with AMX, 32 without)
    run one native call per layer; the bits are those of the native kernels called one by one."""
    folder, _ = tiny_checkpoint(family)
    gen = torch.Generator().manual_seed(5)
    sequences = [torch.randint(3, 128, (p + 6,), generator=gen).tolist() for p in PROMPT_LENS]
    short = _prefill_item(9, sequences[2][:4], _tables([4], seed=7)[0])
    results = []
    for fused in (True, False):
        runner = make_runner(folder, dtype="bfloat16", fused=fused, num_kv_blocks=NUM_KV_BLOCKS)
        logits = _logits_of(runner, sequences, num_decode=6)
        plan = StepPlan(step_id=9, shape=PrefillShape(1, 16), prefill=(short,))
        results.append((logits, runner.compute_logits(plan)))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_bfloat16_decode_does_not_depend_on_the_batch(tiny_checkpoint, make_runner):
    """Native decode kernels compute each row on its own: a sequence's logits are the same
    bits alone or in a batch."""
    folder, _ = tiny_checkpoint("llama")
    runner = make_runner(folder, dtype="bfloat16", num_kv_blocks=NUM_KV_BLOCKS)
    gen = torch.Generator().manual_seed(6)
    sequences = [torch.randint(3, 128, (p + 1,), generator=gen).tolist() for p in PROMPT_LENS]
    tables = _tables([len(s) for s in sequences])
    for i, (s, p) in enumerate(zip(sequences, PROMPT_LENS, strict=True)):  # same KV either way
        item = _prefill_item(i, s[:p], tables[i])
        runner.compute_logits(StepPlan(step_id=0, shape=PrefillShape(1, 24), prefill=(item,)))
    decode = [
        DecodeItem(request_id=i, token_id=s[p], position=p, block_table=tables[i])
        for i, (s, p) in enumerate(zip(sequences, PROMPT_LENS, strict=True))
    ]
    batch = runner.compute_logits(
        StepPlan(step_id=1, shape=_decode_bucket(PROMPT_LENS), decode=tuple(decode))
    )
    for i, item in enumerate(decode):
        alone = runner.compute_logits(
            StepPlan(step_id=2 + i, shape=_decode_bucket([item.position]), decode=(item,))
        )
        assert torch.equal(alone[0], batch[i])
