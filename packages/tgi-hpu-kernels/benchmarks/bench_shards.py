"""Tensor parallelism on one CPU host: per-rank memory and step time at 1, 2 and 3 shards.

The model is a random-weight Llama with SmolLM2-135M's shapes (30 layers, hidden 576, MLP
1536, vocab 49152, tied embeddings) but 12 attention heads and 6 KV heads of 48, so that it
splits 2 and 3 ways (SmolLM2's 9 heads / 3 KV heads do not split 2 ways); timing and memory
do not depend on the weights' values. float32 for every shard count.

Each shard count runs the real sharded runner, as the tests' ``sharded_runner`` does: rank
0's ``TorchModelRunner`` with its ``TensorParallelGroup`` (gloo on 127.0.0.1), ranks 1..N-1
as ``python -m tgi_hpu_kernels.parallel.worker`` children (``ShardProcesses``), stopped by
``stop_shards``; one shard is the unsharded runner. Rank 0 runs in a fresh child of the bench
each time (so its RSS holds no earlier runner), as does the checkpoint's writing. Every rank
runs ``--threads`` torch threads (default 1, as each Gaudi rank has its own card; on a
shared host two OpenMP threads spin at each barrier while other work holds a core). Per
round, shard counts interleaved:

- resident memory (RSS) of every rank after loading and after the steps, each rank's weight
  bytes (the checkpoint's tensors through ``shard_weights``, as the loader slices them) and
  its KV pool bytes;
- decode steps at batch 1 and 32 over ``--context`` tokens of KV, ``--steps`` timed after 2;
- then a prefill of 1 x ``--prompt`` tokens, ``--prefills`` times.

Step times are rank 0's ``execute`` (plan broadcast, forward with all-reduces, sampling);
each cell is the median over rounds of the round's median (the rounds' min-max). On one
host all ranks share the cores and memory bandwidth, and gloo all-reduces go over loopback.

Usage: ``hatch run bench:shards [--shards 1,2,3] [--rounds 3] [--steps 20] [--threads 1]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors import safe_open

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device import select_device
from tgi_hpu_kernels.device.cpu_features import host_cpu_features
from tgi_hpu_kernels.parallel import local_shards, shard_weights
from tgi_hpu_kernels.runner import TorchModelRunner

VOCAB, KV_HEADS = 49152, 6
# SmolLM2-135M's shapes, but heads that split 2 and 3 ways (12 x 48 = 576 still)
ARCHITECTURE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 12,
    "num_key_value_heads": KV_HEADS,
    "head_dim": 48,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
SHARD_COMMAND = (sys.executable, "-m", "tgi_hpu_kernels.parallel.worker")
BLOCK_SIZE = 16
DECODE_BATCHES = (1, 32)
WARMUP_STEPS = 2
MIB = 2**20


@dataclass
class Round:
    """One shard count's figures in one round (per-rank lists in rank order)."""

    rss_loaded: list[float]  # MiB
    rss_after: list[float]
    decode_ms: dict[int, float]  # batch -> median ms per step
    prefill_ms: float


@dataclass
class Figures:
    num_shard: int
    weight_mib: list[float]  # per rank
    kv_mib: float = 0.0  # per rank (the KV heads divide every shard count here)
    rounds: list[Round] = field(default_factory=list)


def _write_checkpoint(folder: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**ARCHITECTURE)).save_pretrained(folder)


def _weight_mib(folder: Path, num_shard: int) -> list[float]:
    sizes = []
    for rank in range(num_shard):
        with safe_open(str(folder / "model.safetensors"), "pt") as file:
            tensors = ((name, file.get_tensor(name)) for name in file.keys())  # noqa: SIM118
            sliced = shard_weights(tensors, rank=rank, num_shard=num_shard, num_kv_heads=KV_HEADS)
            sizes.append(sum(t.numel() * t.element_size() for _, t in sliced) / MIB)
    return sizes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _sharded_runner(settings: RunnerSettings) -> Iterator[tuple[TorchModelRunner, list[int]]]:
    """Rank 0's runner here, ranks 1..N-1 as worker processes (their PIDs)."""
    device = select_device("cpu", settings)
    if settings.num_shard == 1:
        runner = TorchModelRunner(settings, device=device)
        try:
            yield runner, []
        finally:
            runner.close()
        return
    settings = replace(settings, master_addr="127.0.0.1", master_port=_free_port())
    with local_shards(settings, SHARD_COMMAND) as (group, processes):
        runner = TorchModelRunner(settings, device=device, group=group)
        try:
            yield runner, processes.pids
        finally:
            runner.close()


def _rss_mib(pids: list[int]) -> list[float]:
    return [psutil.Process(pid).memory_info().rss / MIB for pid in pids]


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def _prefill_plan(batch: int, length: int, room: int, first_request: int) -> StepPlan:
    """``batch`` random prompts of ``length`` tokens, with blocks for ``room`` more."""
    rng = random.Random(first_request)
    per_seq = _blocks(length + room)
    items = tuple(
        PrefillItem(
            request_id=first_request + i,
            token_ids=tuple(rng.randrange(1, VOCAB) for _ in range(length)),
            num_prompt_tokens=length,
            num_cached_tokens=0,
            block_table=tuple(range(i * per_seq, (i + 1) * per_seq)),
            sampling=SamplingParams(),
        )
        for i in range(batch)
    )
    return StepPlan(step_id=0, shape=PrefillShape(batch, length), prefill=items)


def _release(runner: TorchModelRunner, plan: StepPlan) -> None:
    released = tuple(item.request_id for item in plan.prefill)
    runner.execute(StepPlan(step_id=-1, shape=None, released=released))


def _timed_ms(runner: TorchModelRunner, plan: StepPlan) -> float:
    start = time.perf_counter()
    runner.execute(plan)
    return (time.perf_counter() - start) * 1000


def _decode_ms(runner: TorchModelRunner, batch: int, context: int, steps: int) -> float:
    prefill = _prefill_plan(batch, context, WARMUP_STEPS + steps, first_request=0)
    runner.execute(prefill)
    shape = DecodeShape(batch, len(prefill.prefill[0].block_table))
    times = []
    for k in range(WARMUP_STEPS + steps):
        decode = tuple(
            DecodeItem(item.request_id, 5, context + k, item.block_table)
            for item in prefill.prefill
        )
        elapsed = _timed_ms(runner, StepPlan(step_id=k + 1, shape=shape, decode=decode))
        if k >= WARMUP_STEPS:
            times.append(elapsed)
    _release(runner, prefill)
    return statistics.median(times)


def _prefill_ms(runner: TorchModelRunner, length: int, repeats: int) -> float:
    times = []
    for k in range(repeats):  # after the decode phases: warm
        plan = _prefill_plan(1, length, 1, first_request=1000 + k)
        times.append(_timed_ms(runner, plan))
        _release(runner, plan)
    return statistics.median(times)


def _round(settings: RunnerSettings, args: argparse.Namespace) -> tuple[Round, int, float]:
    """In a fresh process (rank 0), so no earlier runner's memory is in its RSS; returns the
    figures, the KV pool bytes per rank and this process's RSS before loading."""
    before = _rss_mib([os.getpid()])[0]
    with _sharded_runner(settings) as (runner, shard_pids):
        pids = [os.getpid(), *shard_pids]
        loaded = _rss_mib(pids)
        decode = {b: _decode_ms(runner, b, args.context, args.steps) for b in DECODE_BATCHES}
        prefill = _prefill_ms(runner, args.prompt, args.prefills)
        return Round(loaded, _rss_mib(pids), decode, prefill), runner.kv_cache_bytes, before


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _per_rank(values: list[list[float]]) -> str:
    """Rank 0 / rank 1 / ...: each rank's median over rounds."""
    return " / ".join(f"{statistics.median(v):.0f}" for v in zip(*values, strict=True))


def _print(figures: list[Figures], args: argparse.Namespace, notes: str) -> None:
    print(
        f"\n{host_cpu_features().describe()}; {os.cpu_count()} logical cores; torch "
        f"{torch.__version__}; float32, random weights; {args.threads} torch thread(s) per "
        f"rank; {args.rounds} rounds, shard counts interleaved; {notes}"
    )
    print(
        f"decode: {args.context} tokens of KV, median of {args.steps} steps; prefill: median "
        f"of {args.prefills}; cells: median over rounds (min-max); MiB per rank: rank 0 / "
        "rank 1 / ...\n"
    )
    print(
        "| shards | weights MiB | KV pool MiB | RSS after load MiB | RSS after steps MiB "
        f"| prefill 1x{args.prompt} ms | decode batch 1 ms/step | decode batch 32 ms/step |"
    )
    print("|---:|---|---:|---|---|---:|---:|---:|")
    for f in figures:
        weights = " / ".join(f"{w:.0f}" for w in f.weight_mib)
        rss = [
            _per_rank([r.rss_loaded for r in f.rounds]),
            _per_rank([r.rss_after for r in f.rounds]),
        ]
        times = [_cell([r.prefill_ms for r in f.rounds])]
        times += [_cell([r.decode_ms[b] for r in f.rounds]) for b in DECODE_BATCHES]
        print(f"| {f.num_shard} | {weights} | {f.kv_mib:.0f} | {' | '.join(rss + times)} |")


def _settings(folder: str, args: argparse.Namespace) -> RunnerSettings:
    decode_tokens = args.context + WARMUP_STEPS + args.steps
    return RunnerSettings(
        model_id=folder,
        dtype="float32",
        device="cpu",
        block_size=BLOCK_SIZE,
        max_total_tokens=max(args.prompt + 1, decode_tokens),
        max_batch_size=max(DECODE_BATCHES),
        num_threads=args.threads,
        # what the largest step needs, and the same on every rank
        num_kv_blocks=max(_blocks(args.prompt + 1), max(DECODE_BATCHES) * _blocks(decode_tokens)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="1,2,3", help="shard counts, e.g. 1,2,3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed decode steps")
    parser.add_argument("--context", type=int, default=16, help="KV tokens before decoding")
    parser.add_argument("--prompt", type=int, default=512, help="prefill length")
    parser.add_argument("--prefills", type=int, default=2, help="timed prefills")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    spawn = multiprocessing.get_context("spawn")
    baselines = []
    with tempfile.TemporaryDirectory() as folder:
        writer = spawn.Process(target=_write_checkpoint, args=(folder,))
        writer.start()
        writer.join()
        if writer.exitcode:
            raise SystemExit(f"writing the checkpoint failed (exit code {writer.exitcode})")
        base = _settings(folder, args)
        figures = [
            Figures(int(n), _weight_mib(Path(folder), int(n))) for n in args.shards.split(",")
        ]
        for round_ in range(args.rounds):
            for f in figures:  # interleaved
                settings = replace(base, num_shard=f.num_shard)
                with ProcessPoolExecutor(1, mp_context=spawn) as rank0:
                    result, kv_bytes, before = rank0.submit(_round, settings, args).result()
                f.rounds.append(result)
                baselines.append(before)
                f.kv_mib = kv_bytes / MIB
                decode = ", ".join(f"batch {b}: {ms:.1f}" for b, ms in result.decode_ms.items())
                print(
                    f"round {round_ + 1}, {f.num_shard} shard(s): decode ms/step {decode}; "
                    f"prefill {result.prefill_ms:.0f} ms",
                    flush=True,
                )
    notes = (
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; rank 0's "
        f"process held {statistics.median(baselines):.0f} MiB before loading"
    )
    _print(figures, args, notes)


if __name__ == "__main__":
    main()
