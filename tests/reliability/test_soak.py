"""A soak: 64 concurrent clients for ``SOAK_SECONDS`` against the real launcher.

Each client sends one request after another, drawn from a seeded generator: every
generating route, streamed or not, with grammars (regex and JSON schema), stop sequences
and sampling parameters mixed, and about one in six cancelled by its client after a random
delay (a stream mid-way, a plain request before its answer). Every request the client did
not cancel must end with an answer it can read (a 200 with a whole body or a final event),
and no answer may be a 5xx. Afterwards the engine holds nothing (KV blocks in use, queue
and batch back to 0), and the service's resident memory grew less than 5% between minute 1
and the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tgi_server.testing import LaunchedService, process_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOAK_SECONDS = 180  # CI runs the whole suite in under 30 minutes on 2 cores
CLIENTS = 64
SEED = 12
MAX_REQUESTS = 20_000  # a bound whatever the machine's speed
REQUEST_TIMEOUT_S = 600  # a queued request waits behind 63 others (minutes on a busy 2-core host)
MEMORY_BASELINE_S = 60
CANCEL_RATE = 0.15

REGEX = {"type": "regex", "value": "[0-9]{1,3}( (apples|pears))?"}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
PROMPTS = ("Tell me a story", "List three fruits:", "What is 2+2?", "Write a JSON person:")
STOPS = ((), (".",), ("\n", " the"), ("!", "?", ",", ";"))


@pytest.fixture(scope="module")
def soaked(launch: Any, stop_and_check: Any) -> Iterator[LaunchedService]:
    # Room for every client: a refusal (429) would be an answer, but not the one under test.
    service = launch(
        "soak", "--workers", "2", "--max-concurrent-requests", "128",
        environ={"WARMUP_ENABLED": "false"},
    )  # fmt: skip
    yield service
    stop_and_check(service)


def sampling(rng: random.Random) -> dict[str, Any]:
    """Greedy, or sampling with a random mix of warpers and penalties."""
    if rng.random() < 0.3:
        return {}
    drawn: dict[str, Any] = {"temperature": round(rng.uniform(0.2, 1.5), 2)}
    if rng.random() < 0.5:
        drawn["top_p"] = round(rng.uniform(0.5, 0.95), 2)
    if rng.random() < 0.5:
        drawn["top_k"] = rng.randint(1, 50)
    if rng.random() < 0.3:
        drawn["seed"] = rng.randint(0, 2**32)
    if rng.random() < 0.3:
        drawn["frequency_penalty"] = round(rng.uniform(-1.0, 1.0), 2)
    return drawn


def draw_request(rng: random.Random) -> tuple[str, dict[str, Any], bool]:
    """(path, body, streamed) of one request."""
    prompt, tokens, stops = rng.choice(PROMPTS), rng.randint(1, 24), list(rng.choice(STOPS))
    streamed, params = rng.random() < 0.5, sampling(rng)
    route = rng.choice(("generate", "chat", "completions"))
    if route == "generate":
        parameters: dict[str, Any] = {"max_new_tokens": tokens, "stop": stops, **params}
        if rng.random() < 0.3:
            parameters["repetition_penalty"] = round(rng.uniform(0.8, 1.5), 2)
        grammar = rng.choice((None, None, REGEX, {"type": "json", "value": SCHEMA}))
        if grammar is not None:
            parameters["grammar"] = grammar
        path = "/generate_stream" if streamed else "/generate"
        return path, {"inputs": prompt, "parameters": parameters}, streamed
    body: dict[str, Any] = {"max_tokens": tokens, "stop": stops, "stream": streamed, **params}
    if route == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
        if rng.random() < 0.3:
            body["response_format"] = {"type": "json_object", "value": SCHEMA}
        return "/v1/chat/completions", body, streamed
    return "/v1/completions", {**body, "prompt": prompt}, streamed


def answer_is_whole(path: str, streamed: bool, body: bytes) -> bool:
    """A 200's body is whole: JSON with the route's answer, or SSE ending in a final event."""
    try:
        if not streamed:
            answer = json.loads(body)
            return "generated_text" in answer if path == "/generate" else bool(answer["choices"])
        lines = body.decode().split("\n")
        data = [line.removeprefix("data:").strip() for line in lines if line.startswith("data:")]
        events = [json.loads(event) for event in data if event != "[DONE]"]
    except ValueError:  # not JSON: reported with the body
        return False
    if not events or any("error" in event for event in events):
        return False
    if path == "/generate_stream":
        return events[-1].get("generated_text") is not None
    choices = [choice for event in events for choice in event.get("choices", [])]
    return data[-1] == "[DONE]" and any(choice.get("finish_reason") for choice in choices)


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    cancelled: int = 0
    broken: list[str] = field(default_factory=list)  # answers a client could not use
    sent: int = 0


async def one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    path, body, streamed = draw_request(rng)
    cancel_after = rng.uniform(0.05, 2.0) if rng.random() < CANCEL_RATE else None
    seen: dict[str, Any] = {}

    async def send() -> None:
        async with client.stream("POST", path, json=body) as response:
            seen["status"] = response.status_code
            seen["body"] = await response.aread()

    try:
        await asyncio.wait_for(send(), cancel_after or REQUEST_TIMEOUT_S)
    except asyncio.TimeoutError:
        if cancel_after is None:
            tally.broken.append(f"{path} {body}: no answer in {REQUEST_TIMEOUT_S} s")
        else:
            tally.cancelled += 1
        if "status" in seen:  # a stream cancelled mid-way had its status line
            tally.statuses[seen["status"]] += 1
        return
    tally.statuses[seen["status"]] += 1
    if seen["status"] != 200 or not answer_is_whole(path, streamed, seen["body"]):
        tally.broken.append(f"{path} {body}: {seen['status']} {seen['body'][-300:]!r}")


async def soak(service: LaunchedService, memory: dict[str, int]) -> Tally:
    tally = Tally()
    started = time.monotonic()
    end = started + SOAK_SECONDS

    async def user(index: int) -> None:
        rng = random.Random(SEED * 1000 + index)
        async with httpx.AsyncClient(base_url=service.url, timeout=REQUEST_TIMEOUT_S) as client:
            while time.monotonic() < end and tally.sent < MAX_REQUESTS:
                tally.sent += 1
                await one_request(client, rng, tally)

    async def sample_memory() -> None:
        await asyncio.sleep(MEMORY_BASELINE_S)
        memory["minute 1"] = resident_bytes(service)

    sampler = asyncio.ensure_future(sample_memory())
    await asyncio.wait_for(
        asyncio.gather(*(user(i) for i in range(CLIENTS))), SOAK_SECONDS + REQUEST_TIMEOUT_S + 60
    )
    memory["end"] = resident_bytes(service)
    await sampler
    return tally


def resident_bytes(service: LaunchedService) -> int:
    """The resident memory of the launcher and everything it started (engine, workers)."""
    total = 0
    for pid in (service.pid, *process_tree(service.pid)):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if found := re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M):
            total += int(found.group(1)) * 1024
    return total


def engine_gauges(service: LaunchedService) -> dict[str, int]:
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    names = "tgi_kv_blocks_used|tgi_queue_size|tgi_batch_current_size"
    return {name: int(value) for name, value in re.findall(rf"^({names}) (\d+)$", text, re.M)}


def test_64_streams_soak(soaked: LaunchedService) -> None:
    memory: dict[str, int] = {}
    tally = asyncio.run(soak(soaked, memory))
    print(f"\nsoak: {tally.sent} requests, {tally.cancelled} cancelled, {dict(tally.statuses)}")
    print(f"soak: resident memory {memory}")
    for broken in tally.broken:
        print(f"soak: broken: {broken[:400]}")
    assert tally.sent > CLIENTS
    assert not [status for status in tally.statuses if status >= 500], tally.statuses
    idle = {"tgi_kv_blocks_used": 0, "tgi_queue_size": 0, "tgi_batch_current_size": 0}
    deadline = time.monotonic() + 30  # a cancellation lands within a step or two
    while (gauges := engine_gauges(soaked)) != idle and time.monotonic() < deadline:
        time.sleep(0.5)
    assert gauges == idle
    assert memory["end"] < memory["minute 1"] * 1.05, memory
    assert not tally.broken, f"{len(tally.broken)} requests without a whole answer"
