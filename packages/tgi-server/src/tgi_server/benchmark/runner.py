"""Load generation: N closed-loop clients or an open-loop Poisson arrival rate, bounded twice.

A run stops at whichever comes first, ``num_requests`` sent or ``max_duration_s`` elapsed;
requests still in flight at the deadline are cancelled and counted, not timed. Targets must be
``http://127.0.0.1``: this tool only ever loads servers on this machine. One ``httpx``
client with a pool the size of the concurrency carries every request. What one request does on
the wire is ``client.py``'s business; the statistics are ``report.py``'s.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from tgi_server.benchmark.client import Api, RequestRecord, stream_request
from tgi_server.benchmark.profiles import BenchRequest

ALLOWED_HOST = "127.0.0.1"
Sender = Callable[[int], Awaitable[RequestRecord]]
# Shares no prefix with any profile's prompts, so warming up primes no cache.
WARMUP_REQUEST = BenchRequest((("user", "Hello!"),), "Hello!", max_new_tokens=8)


def check_local_url(url: str) -> str:
    """``url`` without a trailing slash, if it is plain HTTP on 127.0.0.1; else ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != ALLOWED_HOST:
        raise ValueError(
            f"refusing to load {url!r}: only http://{ALLOWED_HOST}[:port] targets are allowed"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"refusing {url!r}: give a bare http://{ALLOWED_HOST}:PORT base URL")
    return url.rstrip("/")


@dataclass(frozen=True)
class LoadSpec:
    """The shape and bounds of one load run: exactly one of ``concurrency``/``request_rate``."""

    num_requests: int
    max_duration_s: float
    concurrency: int | None = None
    request_rate: float | None = None  # requests per second, Poisson arrivals
    max_concurrency: int = 128  # connection pool (and so in-flight cap) in rate mode
    num_warmup: int = 0  # short requests sent one by one before timing starts, not recorded
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("give exactly one of concurrency and request_rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError("request_rate must be positive")
        if self.num_requests < 1 or self.max_duration_s <= 0:
            raise ValueError("num_requests and max_duration_s must be positive")

    @property
    def pool_size(self) -> int:
        return self.concurrency if self.concurrency is not None else self.max_concurrency


@dataclass
class RunResult:
    """Every finished request of a run, plus what the bounds cut off."""

    spec: LoadSpec
    records: list[RequestRecord] = field(default_factory=list)
    num_sent: int = 0
    num_cancelled: int = 0
    duration_s: float = 0.0


async def run_load(
    base_url: str,
    api: Api,
    requests: Sequence[BenchRequest],
    spec: LoadSpec,
    *,
    model: str = "tgi",
    extra_body: dict[str, Any] | None = None,
    first_index: int = 0,
) -> RunResult:
    """Runs ``spec`` against ``base_url``; request ``i`` is ``requests[(first_index + i) % n]``.

    Start successive runs on one server at different ``first_index`` so that no prompt is
    served twice (prefix caches would flatter the second run).
    """
    base_url = check_local_url(base_url)
    if not requests:
        raise ValueError("no requests to send")
    pool = spec.pool_size
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    # No read timeout of its own: the run's deadline bounds every request.
    timeout = httpx.Timeout(None, connect=10.0)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=timeout, trust_env=False
    ) as client:

        async def send(index: int) -> RequestRecord:
            request = requests[(first_index + index) % len(requests)]
            return await stream_request(client, api, request, model=model, extra_body=extra_body)

        for _ in range(spec.num_warmup):
            await stream_request(client, api, WARMUP_REQUEST, model=model, extra_body=extra_body)
        if spec.concurrency is not None:
            return await _closed_loop(send, spec)
        return await _open_loop(send, spec)


async def _closed_loop(send: Sender, spec: LoadSpec) -> RunResult:
    """``concurrency`` workers, each sending its next request when the last one ends."""
    result = RunResult(spec)
    indices = itertools.count()
    start = time.perf_counter()
    deadline = start + spec.max_duration_s

    async def worker() -> None:
        while (index := next(indices)) < spec.num_requests and time.perf_counter() < deadline:
            result.num_sent += 1
            result.records.append(await send(index))

    workers = [asyncio.create_task(worker()) for _ in range(spec.pool_size)]
    await _wait_until(workers, deadline)
    result.duration_s = time.perf_counter() - start
    result.num_cancelled = result.num_sent - len(result.records)
    return result


async def _open_loop(send: Sender, spec: LoadSpec) -> RunResult:
    """Requests launched at Poisson arrival times, whether or not earlier ones have ended."""
    assert spec.request_rate is not None
    result = RunResult(spec)
    arrivals = random.Random(spec.seed)
    start = time.perf_counter()
    deadline = start + spec.max_duration_s
    in_flight: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        result.records.append(await send(index))

    next_arrival = start
    for index in range(spec.num_requests):
        next_arrival += arrivals.expovariate(spec.request_rate)
        if next_arrival >= deadline:
            break
        await asyncio.sleep(max(0.0, next_arrival - time.perf_counter()))
        result.num_sent += 1
        in_flight.append(asyncio.create_task(one(index)))
    await _wait_until(in_flight, deadline)
    result.duration_s = time.perf_counter() - start
    result.num_cancelled = result.num_sent - len(result.records)
    return result


async def _wait_until(tasks: Sequence[asyncio.Task[None]], deadline: float) -> None:
    """Waits for ``tasks`` until ``deadline``, then cancels what is left and lets it unwind."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


def run_load_sync(
    base_url: str,
    api: Api,
    requests: Sequence[BenchRequest],
    spec: LoadSpec,
    **kwargs: Any,
) -> RunResult:
    """``run_load`` in a fresh event loop (for scripts and the CLI)."""
    return asyncio.run(run_load(base_url, api, requests, spec, **kwargs))
