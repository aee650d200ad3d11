"""Tensor parallelism on the CPU (gloo): 2 shards give the single-rank runner's logits and
greedy tokens on tiny random Llama, Qwen2 and StarCoder2 models, in float32; bad shard counts
fail early; the shard processes are handles the caller supervises.

The sharded runner is the real thing: rank 0 in this process, handed its group, rank 1 a
child process (``sharded_runner`` in conftest.py starts it), plans broadcast every step. The
engine's supervision of its shards (a dead one ends it) is tgi_server's, tested there.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import psutil
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
from tgi_core.settings.slices import ProfileSettings, RunnerSettings
from tgi_hpu_kernels.parallel import ShardProcesses
from tgi_hpu_kernels.testing import save_tiny_lora_adapter, teacher_forced_logits

BLOCK_SIZE = 4
PROMPTS = ([3, 17, 29, 41, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17])
NUM_DECODE = 4
ATOL = 1e-4


def _tables(base: int) -> list[tuple[int, ...]]:
    return [tuple(range(base + 8 * i, base + 8 * i + 8)) for i in range(len(PROMPTS))]


def _prefill(base_seq: int, tables: list[tuple[int, ...]], released=()) -> StepPlan:
    items = tuple(
        PrefillItem(
            request_id=base_seq + i,
            token_ids=tuple(p),
            num_prompt_tokens=len(p),
            num_cached_tokens=0,
            block_table=t,
            sampling=SamplingParams(),
        )
        for i, (p, t) in enumerate(zip(PROMPTS, tables, strict=True))
    )
    return StepPlan(step_id=0, shape=PrefillShape(2, 16), prefill=items, released=released)


def _decode(base_seq: int, tables, tokens: list[int], step: int) -> StepPlan:
    items = tuple(
        DecodeItem(request_id=base_seq + i, token_id=tok, position=len(p) + step, block_table=t)
        for i, (p, t, tok) in enumerate(zip(PROMPTS, tables, tokens, strict=True))
    )
    return StepPlan(step_id=step + 1, shape=DecodeShape(batch_size=2, num_blocks=8), decode=items)


def _teacher_forced_logits(runner) -> torch.Tensor:
    tables = _tables(0)
    steps = [runner.compute_logits(_prefill(0, tables))]
    for step in range(NUM_DECODE):
        tokens = [(13 * step + i) % 100 for i in range(len(PROMPTS))]
        steps.append(runner.compute_logits(_decode(0, tables, tokens, step)))
    return torch.stack(steps)


def _greedy_tokens(runner) -> list[list[int]]:
    tables = _tables(24)
    out = runner.execute(_prefill(10, tables, released=(0, 1)))
    tokens = [[o.token_id for o in out.outputs]]
    for step in range(NUM_DECODE):
        out = runner.execute(_decode(10, tables, tokens[-1], step))
        tokens.append([o.token_id for o in out.outputs])
    return tokens


@pytest.mark.slow
@pytest.mark.parametrize(
    "family",
    [
        "falcon_new",
        "gemma",
        "gemma2",
        "gpt_bigcode_mha",  # multi-query (one KV head) cannot be split
        "llama",
        "mixtral",
        "phi3",
        "qwen2",
        "qwen3",
        "starcoder2",
    ],
)
def test_two_shards_match_one(tiny_checkpoint, make_runner, sharded_runner, family):
    folder, _ = tiny_checkpoint(family)
    single = make_runner(folder, block_size=BLOCK_SIZE)
    expected_logits, expected_tokens = _teacher_forced_logits(single), _greedy_tokens(single)
    with sharded_runner(folder, block_size=BLOCK_SIZE) as (sharded, shard_pids):
        assert len(shard_pids) == 1 and psutil.pid_exists(shard_pids[0])
        assert sharded.config.num_attention_heads == single.config.num_attention_heads // 2
        assert sharded.num_kv_blocks == single.num_kv_blocks
        torch.testing.assert_close(
            _teacher_forced_logits(sharded), expected_logits, atol=ATOL, rtol=0
        )
        assert _greedy_tokens(sharded) == expected_tokens
    assert not psutil.pid_exists(shard_pids[0]) or psutil.Process(shard_pids[0]).status() == (
        psutil.STATUS_ZOMBIE
    )


@pytest.mark.slow
def test_two_shards_with_lora_adapters_match_one(
    tiny_checkpoint, make_runner, sharded_runner, tmp_path
):
    pytest.importorskip("peft")
    folder, _ = tiny_checkpoint("llama")
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    save_tiny_lora_adapter(folder, tmp_path / "a", seed=3, r=4, target_modules=projections)
    save_tiny_lora_adapter(folder, tmp_path / "b", seed=4, r=2, target_modules=["o_proj"])
    entries = (f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}")
    sequences = [[(3 * i + 11 * s) % 128 for i in range(12)] for s in range(3)]
    adapter_ids = [None, "a", "b"]
    single = make_runner(folder, block_size=BLOCK_SIZE, lora_adapters=entries)
    expected = teacher_forced_logits(single, sequences, 5, BLOCK_SIZE, adapter_ids)
    with sharded_runner(folder, block_size=BLOCK_SIZE, lora_adapters=entries) as (sharded, _):
        ours = teacher_forced_logits(sharded, sequences, 5, BLOCK_SIZE, adapter_ids)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_shard_ranks_write_their_own_profiles(tiny_checkpoint, sharded_runner, tmp_path):
    profile = ProfileSettings(
        wait_steps=0, warmup_steps=1, active_steps=2, path=str(tmp_path), ranks=(0, 1)
    )
    folder = tiny_checkpoint("llama")[0]
    with sharded_runner(folder, block_size=BLOCK_SIZE, profile=profile) as (sharded, _):
        _greedy_tokens(sharded)  # several steps on both ranks
    # on the way out rank 1 left its loop, its trace already written
    for rank in (0, 1):
        [trace] = tmp_path.glob(f"rank{rank}_step*.pt.trace.json")
        events = json.loads(trace.read_text())["traceEvents"]
        assert any(e.get("name") == "tgi_runner_step" for e in events)


def test_head_counts_not_divisible_fail_before_any_shard_starts(tiny_checkpoint, sharded_runner):
    folder, _ = tiny_checkpoint("llama")  # 4 heads, 2 KV heads
    children = set(psutil.Process().children())
    with pytest.raises(ValueError) as raised, sharded_runner(folder, num_shard=3):
        pass
    assert str(raised.value) == (
        "--num-shard 3 must divide the model's attention heads (4) and KV heads (2): "
        "pick a num_shard that divides both"
    )
    assert set(psutil.Process().children()) == children


def test_a_sharded_runner_is_handed_its_group(tiny_checkpoint, make_runner):
    folder, _ = tiny_checkpoint("llama")
    with pytest.raises(ValueError) as raised:
        make_runner(folder, num_shard=2)
    assert str(raised.value) == (
        "rank 0 of --num-shard 2 needs its TensorParallelGroup (group=), joined by whoever "
        "starts the other ranks; got rank 0 of 1"
    )


def test_a_dead_shard_is_reported_not_acted_on(tiny_checkpoint):
    """The library's shard processes are handles: a killed shard shows in ``exited()``,
    this process goes on (the server's engine decides that a dead shard ends it)."""
    settings = RunnerSettings(model_id=str(tiny_checkpoint("llama")[0]), num_shard=2)
    reads_its_settings = [
        sys.executable,
        "-c",
        "import sys, time; sys.stdin.read(); time.sleep(60)",
    ]
    shards = ShardProcesses.start(settings, reads_its_settings)
    try:
        [pid] = shards.pids
        assert shards.exited() is None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while shards.exited() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shards.exited() == (1, -signal.SIGKILL)
    finally:
        shards.kill()
    assert not psutil.pid_exists(pid)
