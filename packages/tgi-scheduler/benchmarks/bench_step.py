"""Scheduling cost per engine step: ``schedule()`` + ``update()``, the runner excluded.

Scenarios (HPU-like settings: 128-token blocks, prefix caching on):

- ``decode-256``: 256 running sequences (prompts of 100-900 tokens), every step a decode;
- ``queue-2000/<policy>``: 2,000 requests queued behind a full batch of 32 (TGI-Gaudi's
  default ``max_batch_size``) that finish after 16 tokens, so steps mix decodes and prefills
  that draw from the queue; run for each queue policy.

Usage: ``python packages/tgi-scheduler/benchmarks/bench_step.py [--steps N] [--seed S]``.
Prints one Markdown table, in microseconds per step: wall-clock time (what the engine loop
waits) and the thread's CPU time (the scheduler's own cost, unaffected by other processes
taking the CPU away), mean, p50 and p99, and the mean CPU time of prefill steps.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from dataclasses import dataclass

from tgi_core.contract import GenerationRequest
from tgi_core.settings.slices import QueuePolicy, SchedulerSettings
from tgi_scheduler import Engine
from tgi_scheduler.testing import FakeRunner


@dataclass
class Timing:
    name: str
    wall_us: list[float]
    cpu_us: list[float]
    is_prefill: list[bool]


def build(settings: SchedulerSettings, num_kv_blocks: int) -> tuple[Engine, FakeRunner]:
    runner = FakeRunner(
        num_kv_blocks, settings.block_size, check_kv=False, strict=False, record_plans=False
    )
    engine = Engine.create(settings, runner, eos_token_ids=[runner.eos_token_id])
    engine.warmup()
    return engine, runner


def add_requests(
    engine: Engine, rng: random.Random, count: int, lengths: tuple[int, int], max_new: int
) -> None:
    for request_id in range(count):
        first = rng.randrange(1000, 20000)
        prompt = tuple(range(first, first + rng.randint(*lengths)))
        engine.add_request(GenerationRequest(request_id, prompt, max_new_tokens=max_new))


def time_steps(name: str, engine: Engine, runner: FakeRunner, steps: int) -> Timing:
    scheduler = engine.scheduler
    timing = Timing(name, [], [], [])
    gc.collect()
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.thread_time()
        plan = scheduler.schedule()
        planned, planned_cpu = time.perf_counter(), time.thread_time()
        if plan is None:
            break
        output = runner.execute(plan)
        resumed, resumed_cpu = time.perf_counter(), time.thread_time()
        scheduler.update(plan, output)
        end, end_cpu = time.perf_counter(), time.thread_time()
        timing.wall_us.append(((planned - start) + (end - resumed)) * 1e6)
        timing.cpu_us.append(((planned_cpu - start_cpu) + (end_cpu - resumed_cpu)) * 1e6)
        timing.is_prefill.append(bool(plan.prefill))
    return timing


def decode_256(steps: int, seed: int) -> Timing:
    settings = SchedulerSettings(
        max_concurrent_requests=512,
        max_batch_size=256,
        max_batch_prefill_tokens=16384,
        max_input_tokens=1024,
        max_total_tokens=2048,
        batch_bucket_size=32,
    )
    engine, runner = build(settings, num_kv_blocks=256 * 16 + 1)
    add_requests(engine, random.Random(seed), 256, (100, 900), max_new=1000)
    while engine.stats().batch_size < 256:
        engine.step()
    return time_steps("decode-256", engine, runner, steps)


def queue_2000(steps: int, seed: int, policy: QueuePolicy) -> Timing:
    settings = SchedulerSettings(max_concurrent_requests=4096, queue_policy=policy)
    engine, runner = build(settings, num_kv_blocks=32 * 32 + 1)
    add_requests(engine, random.Random(seed), 2000 + 32, (20, 2000), max_new=16)
    engine.step()  # the first prefill fills the batch; 2,000 stay queued
    return time_steps(f"queue-2000/{policy}", engine, runner, steps)


def stats(values: list[float]) -> list[str]:
    p99 = statistics.quantiles(values, n=100)[98]
    return [f"{statistics.fmean(values):.0f}", f"{statistics.median(values):.0f}", f"{p99:.0f}"]


def row(timing: Timing) -> list[str]:
    prefill_cpu = [t for t, p in zip(timing.cpu_us, timing.is_prefill, strict=True) if p]
    num_prefill = len(prefill_cpu)
    return [
        timing.name,
        f"{len(timing.cpu_us) - num_prefill} / {num_prefill}",
        *stats(timing.wall_us),
        *stats(timing.cpu_us),
        f"{statistics.fmean(prefill_cpu):.0f}" if prefill_cpu else "-",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    timings = [
        decode_256(args.steps, args.seed),
        queue_2000(args.steps, args.seed, "priority"),
        queue_2000(args.steps, args.seed, "fifo"),
    ]
    header = [
        "scenario",
        "decode / prefill steps",
        "wall mean",
        "wall p50",
        "wall p99",
        "CPU mean",
        "CPU p50",
        "CPU p99",
        "prefill CPU mean",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for timing in timings:
        print("| " + " | ".join(row(timing)) + " |")


if __name__ == "__main__":
    main()
