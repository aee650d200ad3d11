"""Queue policies compared in simulation: TGI-Gaudi's "priority" queue vs upstream FIFO.

The real engine and scheduler run against ``FakeRunner`` with a ``CostModel`` (prefill cost
~ padded tokens, decode cost ~ padded batch rows) on a virtual clock, so the figures depend
on the policy and the cost model only, not on this machine. Requests arrive as a Poisson
process; 70 % have short prompts (32-512 tokens), 30 % long ones (1024-2048); each asks for
32-256 new tokens (no EOS). Settings are TGI-Gaudi's defaults (128-token blocks and padding,
``max_batch_size`` 32, ``max_batch_prefill_tokens`` 4096, ``QUEUE_THRESHOLD_MS`` 120).

Usage: ``python packages/tgi-scheduler/benchmarks/simulate_queue.py [--requests N] [--seed S]``.
Prints one Markdown table: time to first token (TTFT) and end-to-end latency, p50 and p99,
per load level and policy, in seconds of simulated device time.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass

from tgi_core.contract import GenerationRequest, RequestFailed
from tgi_core.settings.slices import QueuePolicy, SchedulerSettings
from tgi_scheduler import Engine
from tgi_scheduler.testing import CostModel, FakeRunner

COST = CostModel(step_seconds=0.005, prefill_token_seconds=5e-5, decode_row_seconds=4e-4)


@dataclass(frozen=True)
class Arrival:
    time: float
    request: GenerationRequest


@dataclass
class Outcome:
    ttft: list[float]
    latency: list[float]
    short_ttft: list[float]
    long_ttft: list[float]
    throughput: float


def workload(num_requests: int, rate: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    now = 0.0
    arrivals = []
    for request_id in range(num_requests):
        now += rng.expovariate(rate)
        length = rng.randint(32, 512) if rng.random() < 0.7 else rng.randint(1024, 2048)
        first = rng.randrange(1000, 20000)  # distinct prompts: no prefix-cache effects
        prompt = tuple(range(first, first + length))
        request = GenerationRequest(request_id, prompt, max_new_tokens=rng.randint(32, 256))
        arrivals.append(Arrival(now, request))
    return arrivals


def simulate(arrivals: list[Arrival], policy: QueuePolicy) -> Outcome:
    settings = SchedulerSettings(max_concurrent_requests=100_000, queue_policy=policy)
    runner = FakeRunner(
        32 * 32 + 1, 128, cost_model=COST, check_kv=False, strict=False, record_plans=False
    )
    engine = Engine.create(
        settings, runner, eos_token_ids=[runner.eos_token_id], clock=runner.clock
    )
    first_token: dict[int, float] = {}
    done: dict[int, float] = {}
    pending = 0
    while pending < len(arrivals) or engine.has_unfinished():
        while pending < len(arrivals) and arrivals[pending].time <= runner.clock():
            engine.add_request(arrivals[pending].request)
            pending += 1
        if not engine.has_unfinished():
            runner.elapsed_seconds = arrivals[pending].time  # idle until the next arrival
            continue
        events = engine.step()
        now = runner.clock()
        for event in events:
            if isinstance(event, RequestFailed):
                failure = f"{event.kind.value}: {event.detail}"
                raise RuntimeError(f"request {event.request_id} failed ({failure})")
            first_token.setdefault(event.request_id, now)
            if event.finish_reason is not None:
                done[event.request_id] = now
    start = {a.request.request_id: a.time for a in arrivals}
    ttft = {rid: first_token[rid] - start[rid] for rid in start}
    is_long = {a.request.request_id: len(a.request.prompt_ids) >= 1024 for a in arrivals}
    generated = sum(a.request.max_new_tokens for a in arrivals)
    return Outcome(
        ttft=list(ttft.values()),
        latency=[done[rid] - start[rid] for rid in start],
        short_ttft=[t for rid, t in ttft.items() if not is_long[rid]],
        long_ttft=[t for rid, t in ttft.items() if is_long[rid]],
        throughput=generated / runner.clock(),
    )


def p(values: list[float], q: int) -> str:
    return f"{statistics.quantiles(values, n=100)[q - 1]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    header = [
        "load (req/s)",
        "policy",
        "TTFT p50",
        "TTFT p99",
        "latency p50",
        "latency p99",
        "short-prompt TTFT p99",
        "long-prompt TTFT p99",
        "tokens/s",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for rate in (3.0, 4.5, 6.0):
        arrivals = workload(args.requests, rate, args.seed)
        for policy in ("priority", "fifo"):
            out = simulate(arrivals, policy)
            cells = [
                f"{rate:g}",
                policy,
                p(out.ttft, 50),
                p(out.ttft, 99),
                p(out.latency, 50),
                p(out.latency, 99),
                p(out.short_ttft, 99),
                p(out.long_ttft, 99),
                f"{out.throughput:.0f}",
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
