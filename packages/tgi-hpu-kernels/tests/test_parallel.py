"""Tensor parallelism on the CPU (gloo): 2 shards give the single-rank runner's logits and
greedy tokens on tiny random Llama, Qwen2 and StarCoder2 models, in float32; bad shard counts
fail early.

The sharded runner is the real thing: rank 0 in this process, rank 1 a child process that
``TorchModelRunner`` starts, plans broadcast every step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

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
from tgi_core.settings.slices import ProfileSettings
from tgi_hpu_kernels.testing import save_tiny_lora_adapter, teacher_forced_logits

BLOCK_SIZE = 4
PROMPTS = ([3, 17, 29, 41, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17])
NUM_DECODE = 4
ATOL = 1e-4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _two_shards(make_runner, folder, **settings):
    """A runner over 2 ranks on 127.0.0.1 (rank 1 in a process it starts)."""
    return make_runner(
        folder,
        block_size=BLOCK_SIZE,
        num_shard=2,
        master_addr="127.0.0.1",
        master_port=_free_port(),
        **settings,
    )


def _tables(base: int) -> list[tuple[int, ...]]:
    return [tuple(range(base + 8 * i, base + 8 * i + 8)) for i in range(len(PROMPTS))]


def _prefill(base_seq: int, tables: list[tuple[int, ...]], released=()) -> StepPlan:
    items = tuple(
        PrefillItem(
            seq_id=base_seq + i,
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
        DecodeItem(seq_id=base_seq + i, token_id=tok, position=len(p) + step, block_table=t)
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
def test_two_shards_match_one(tiny_checkpoint, make_runner, family):
    folder, _ = tiny_checkpoint(family)
    single = make_runner(folder, block_size=BLOCK_SIZE)
    expected_logits, expected_tokens = _teacher_forced_logits(single), _greedy_tokens(single)
    sharded = _two_shards(make_runner, folder)
    try:
        shard_pids = sharded._parallel.processes.pids
        assert len(shard_pids) == 1 and psutil.pid_exists(shard_pids[0])
        assert sharded.config.num_attention_heads == single.config.num_attention_heads // 2
        assert sharded.num_kv_blocks == single.num_kv_blocks
        torch.testing.assert_close(
            _teacher_forced_logits(sharded), expected_logits, atol=ATOL, rtol=0
        )
        assert _greedy_tokens(sharded) == expected_tokens
    finally:
        sharded.close()
    assert not psutil.pid_exists(shard_pids[0]) or psutil.Process(shard_pids[0]).status() == (
        psutil.STATUS_ZOMBIE
    )


@pytest.mark.slow
def test_two_shards_with_lora_adapters_match_one(tiny_checkpoint, make_runner, tmp_path):
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
    sharded = _two_shards(make_runner, folder, lora_adapters=entries)
    try:
        ours = teacher_forced_logits(sharded, sequences, 5, BLOCK_SIZE, adapter_ids)
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
    finally:
        sharded.close()


@pytest.mark.slow
def test_shard_ranks_write_their_own_profiles(tiny_checkpoint, make_runner, tmp_path):
    profile = ProfileSettings(
        wait_steps=0, warmup_steps=1, active_steps=2, path=str(tmp_path), ranks=(0, 1)
    )
    sharded = _two_shards(make_runner, tiny_checkpoint("llama")[0], profile=profile)
    try:
        _greedy_tokens(sharded)  # several steps on both ranks
    finally:
        sharded.close()  # rank 1 leaves its loop, its trace already written
    for rank in (0, 1):
        [trace] = tmp_path.glob(f"rank{rank}_step*.pt.trace.json")
        events = json.loads(trace.read_text())["traceEvents"]
        assert any(e.get("name") == "tgi_runner_step" for e in events)


def test_head_counts_not_divisible_fail_before_any_shard_starts(tiny_checkpoint, make_runner):
    folder, _ = tiny_checkpoint("llama")  # 4 heads, 2 KV heads
    children = set(psutil.Process().children())
    with pytest.raises(ValueError) as raised:
        make_runner(folder, num_shard=3, master_addr="127.0.0.1", master_port=_free_port())
    assert str(raised.value) == (
        "--num-shard 3 must divide the model's attention heads (4) and KV heads (2): "
        "pick a num_shard that divides both"
    )
    assert set(psutil.Process().children()) == children


_RANK0_SCRIPT = """
import sys, time
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.runner import TorchModelRunner
runner = TorchModelRunner(RunnerSettings(
    model_id=sys.argv[1], dtype="float32", device="cpu", block_size=4, max_total_tokens=64,
    num_kv_blocks=16, num_shard=2, master_addr="127.0.0.1", master_port=int(sys.argv[2]),
))
print(runner._parallel.processes.pids[0], flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_dead_shard_takes_rank_0_down_with_exit_code_1(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    with subprocess.Popen(
        [sys.executable, "-c", _RANK0_SCRIPT, str(folder), str(_free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as rank0:
        try:
            assert rank0.stdout is not None
            shard_pid = int(rank0.stdout.readline())
            os.kill(shard_pid, signal.SIGKILL)
            _, stderr = rank0.communicate(timeout=30)
        finally:
            if rank0.poll() is None:
                rank0.kill()
    assert rank0.returncode == 1
    assert "shard 1 exited with code -9: stopping the engine" in stderr
