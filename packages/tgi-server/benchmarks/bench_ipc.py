"""Round-trip overhead of the engine IPC: tokens/s through ZmqEngineClient vs the bare engine.

The engine is a real ``tgi_scheduler.Engine`` over ``FakeRunner`` (no model: a step costs only
the scheduler's bookkeeping), so what is measured is the cost of the path a token takes
between the engine and an HTTP worker. Three ways to drain the same work:

- ``engine``: ``engine.step()`` in a loop, no IPC at all (the ceiling);
- ``in-process``: ``InProcessEngine`` on a thread + ``InProcessEngineClient`` (no sockets);
- ``zmq``: the engine in its own process (``serve_engine``), one ``ZmqEngineClient`` in this
  one over ``ipc://``, as a Gunicorn worker sees it.

    python packages/tgi-server/benchmarks/bench_ipc.py --streams 1 64 --max-new-tokens 256

Each run keeps ``streams`` requests in flight until ``--num-tokens`` tokens are generated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tgi_core.contract import GenerationRequest
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import Engine
from tgi_scheduler.testing import FakeRunner
from tgi_server.engine import InProcessEngine, describe_engine, serve_engine, wait_until_ready
from tgi_server.engine_client import EngineClient, InProcessEngineClient, ZmqEngineClient
from tgi_server.ipc import make_socket_dir, socket_path

SETTINGS = SchedulerSettings(
    max_concurrent_requests=256,
    max_batch_size=64,
    max_batch_prefill_tokens=8192,
    max_input_tokens=63,
    max_total_tokens=1024,
    batch_bucket_size=8,
    prefill_batch_bucket_size=8,
    pad_sequence_to_multiple_of=64,
    block_size=16,
    queue_policy="fifo",
)
PROMPT_IDS = tuple(range(10, 42))


def make_engine() -> Engine:
    runner = FakeRunner(4096, 16, check_kv=False, strict=False, record_plans=False)
    engine = Engine.create(SETTINGS, runner, eos_token_ids=(2,))
    engine.warmup()
    return engine


def bare_engine(streams: int, num_tokens: int, max_new_tokens: int) -> float:
    """Tokens/s of ``engine.step()`` alone, keeping ``streams`` requests in flight."""
    engine = make_engine()
    next_id, generated, in_flight = 1, 0, 0
    start = time.perf_counter()
    while generated < num_tokens:
        while in_flight < streams:
            engine.add_request(GenerationRequest(next_id, PROMPT_IDS, max_new_tokens))
            next_id, in_flight = next_id + 1, in_flight + 1
        for event in engine.step():
            generated += 1
            in_flight -= event.finish_reason is not None  # type: ignore[union-attr]
    return generated / (time.perf_counter() - start)


async def drive(client: EngineClient, streams: int, num_tokens: int, max_new_tokens: int) -> float:
    """Tokens/s through ``client`` with ``streams`` concurrent streams."""
    generated = 0

    async def stream() -> None:
        nonlocal generated
        while generated < num_tokens:
            request = GenerationRequest(client.next_request_id(), PROMPT_IDS, max_new_tokens)
            async for _ in client.generate(request):
                generated += 1

    start = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(streams)))
    return generated / (time.perf_counter() - start)


def in_process(streams: int, num_tokens: int, max_new_tokens: int) -> float:
    engine = make_engine()
    with InProcessEngine(engine, describe_engine(engine, None, model_id="fake")) as served:
        client = InProcessEngineClient(served)
        return asyncio.run(drive(client, streams, num_tokens, max_new_tokens))


def over_zmq(streams: int, num_tokens: int, max_new_tokens: int) -> float:
    socket_dir = make_socket_dir()
    path = socket_path(socket_dir)
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(path)])
    try:
        wait_until_ready(path, is_alive=lambda: process.poll() is None, timeout_s=60)

        async def run() -> float:
            client = ZmqEngineClient(path)
            try:
                await drive(client, 1, max_new_tokens, max_new_tokens)  # connect, warm caches
                return await drive(client, streams, num_tokens, max_new_tokens)
            finally:
                await client.aclose()

        return asyncio.run(run())
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(60)
        socket_dir.rmdir()


def serve(path: str) -> None:
    engine = make_engine()
    serve_engine(engine, describe_engine(engine, None, model_id="fake"), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--num-tokens", type=int, default=100_000)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the engine process of a zmq run
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    ways: dict[str, Callable[[int, int, int], float]] = {
        "engine": bare_engine,
        "in-process": in_process,
        "zmq": over_zmq,
    }
    print("| streams | path | tokens/s | us/token | overhead us/token vs engine |")
    print("|---:|---|---:|---:|---:|")
    for streams in args.streams:
        baseline = 0.0
        for name, way in ways.items():
            rate = way(streams, args.num_tokens, args.max_new_tokens)
            baseline = baseline or rate
            overhead = 1e6 / rate - 1e6 / baseline
            print(f"| {streams} | {name} | {rate:,.0f} | {1e6 / rate:.1f} | {overhead:.1f} |")


if __name__ == "__main__":
    main()
