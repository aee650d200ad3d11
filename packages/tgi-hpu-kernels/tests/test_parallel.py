"""Tensor parallelism on the CPU (gloo): 2 shards give the single-rank runner's logits and
greedy tokens on tiny random models of every native family, in float32, multi-query ones
(one KV head, replicated on both ranks) included; bad shard counts fail early; the shard
processes are handles the caller supervises.

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
from tgi_hpu_kernels.models.llama import LlamaForCausalLM
from tgi_hpu_kernels.parallel import ShardProcesses, check_shardable, shard_weights
from tgi_hpu_kernels.testing import (
    save_tiny_checkpoint,
    save_tiny_lora_adapter,
    teacher_forced_logits,
)

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
        "falcon",  # multi-query: the one KV head replicated on both ranks
        "falcon_new",
        "gemma",
        "gemma2",
        "gpt_bigcode",  # multi-query, as Falcon's
        "gpt_bigcode_mha",
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
def test_two_shards_replicate_a_single_kv_head_lora_on_it_included(
    make_runner, sharded_runner, tmp_path
):
    """4 query heads, 1 KV head: each rank holds 2 query heads and the whole KV head (its
    k/v rows and the LoRA B's on them), so its cache holds one head as the single rank's."""
    pytest.importorskip("peft")
    folder = tmp_path / "llama-mqa"
    save_tiny_checkpoint(folder, "llama", num_key_value_heads=1)
    projections = ["q_proj", "k_proj", "v_proj", "o_proj"]
    save_tiny_lora_adapter(folder, tmp_path / "a", seed=3, r=4, target_modules=projections)
    entries = (f"a={tmp_path / 'a'}",)
    sequences = [[(3 * i + 11 * s) % 128 for i in range(12)] for s in range(2)]
    adapter_ids = [None, "a"]
    single = make_runner(folder, block_size=BLOCK_SIZE, lora_adapters=entries)
    expected_logits = teacher_forced_logits(single, sequences, 5, BLOCK_SIZE, adapter_ids)
    expected_tokens = _greedy_tokens(single)
    with sharded_runner(folder, block_size=BLOCK_SIZE, lora_adapters=entries) as (sharded, _):
        assert (sharded.config.num_attention_heads, sharded.config.num_key_value_heads) == (2, 1)
        assert sharded.num_kv_blocks == single.num_kv_blocks
        ours = teacher_forced_logits(sharded, sequences, 5, BLOCK_SIZE, adapter_ids)
        torch.testing.assert_close(ours, expected_logits, atol=ATOL, rtol=0)
        assert _greedy_tokens(sharded) == expected_tokens


def test_four_shards_of_two_kv_heads_hold_the_head_their_queries_read():
    head_dim, hidden = 3, 5
    k = torch.arange(2 * head_dim * hidden).view(2 * head_dim, hidden)  # KV heads 0 and 1
    kv_bias, q = torch.arange(2 * head_dim), torch.arange(8 * hidden).view(8, hidden)
    layer = "model.layers.0.self_attn"
    weights = [
        (f"{layer}.k_proj.weight", k),
        (f"{layer}.v_proj.bias", kv_bias),
        (f"{layer}.q_proj.weight", q),
    ]
    for rank, head in enumerate((0, 0, 1, 1)):
        sliced = dict(shard_weights(weights, rank=rank, num_shard=4, num_kv_heads=2))
        rows = slice(head * head_dim, (head + 1) * head_dim)
        assert torch.equal(sliced[f"{layer}.k_proj.weight"], k[rows])
        assert torch.equal(sliced[f"{layer}.v_proj.bias"], kv_bias[rows])
        assert torch.equal(sliced[f"{layer}.q_proj.weight"], q[2 * rank : 2 * rank + 2])


def test_kv_heads_that_neither_divide_nor_are_divided_by_num_shard_are_refused():
    config = LlamaForCausalLM.parse_config(
        {
            "vocab_size": 32,
            "hidden_size": 96,
            "intermediate_size": 96,
            "num_hidden_layers": 1,
            "num_attention_heads": 6,
            "num_key_value_heads": 3,
        }
    )
    with pytest.raises(ValueError) as raised:
        check_shardable(config, 2)
    assert str(raised.value) == (
        "--num-shard 2 must divide the model's KV heads (3) or be a multiple of them (each KV "
        "head is then replicated): pick such a num_shard that also divides the attention "
        "heads (6)"
    )
    check_shardable(config, 3)  # 2 query heads and 1 KV head each
    check_shardable(config, 6)  # 1 query head each, every KV head on 2 ranks


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
        "--num-shard 3 must divide the model's attention heads (4): pick a num_shard that divides 4"
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
