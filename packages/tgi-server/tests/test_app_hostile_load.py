"""Hostile load on one worker: clients that hang up, requests beyond the limit, big bodies.

- A client that leaves before its non-streamed answer stops its generation at once, on
  every generating route: through the ASGI interface, then over real sockets (uvicorn)
  with clients that send and close, while other clients' requests finish normally.
- Beyond ``max_concurrent_requests`` a request is refused (429) before it is validated:
  a prompt that validation would refuse, or a 300 kB one, gets the 429, not a 422.
- ``/vertex`` caps its instances; the Gunicorn workers cap their connections; ``/metrics``
  answers while the engine is stuck in a step.

The engine runs tgi_scheduler's FakeRunner on a thread (``Harness``), slowed down to hold
requests open.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import falcon.asgi
import falcon.testing
import httpx
import pytest

from tgi_core.settings.slices import ServerSettings
from tgi_server import gunicorn_conf
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine_client import InProcessEngineClient
from tgi_server.resources import metrics as metrics_resource
from tgi_server.testing import HARNESS_LIMITS, Harness, OpenStream, ServedApp

App = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]
LONG = {"inputs": "Hello", "parameters": {"max_new_tokens": 90}}  # 4.5 s at 0.05 s a step
OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}

# Every generating route, asked for a long non-streamed generation.
LONG_REQUESTS = {
    "/generate": LONG,
    "/": LONG,
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "stream": False},
    "/v1/completions": {"prompt": "Hello", "max_tokens": 90, "stream": False},
    "/vertex": {"instances": [LONG]},
    "/invocations": LONG,
}


@pytest.fixture
def slow(harness: Harness) -> Iterator[Harness]:
    """The harness with each engine step taking 50 ms."""
    harness.runner.reset()
    harness.runner.step_delay_s = 0.05
    yield harness
    harness.runner.reset()


def cancelling_app(harness: Harness, **settings: Any) -> App:
    """An app as the served one is built: non-streamed requests stop when clients leave."""
    server = ServerSettings(model_id="smollm2", limits=HARNESS_LIMITS, **settings)
    return create_app(
        server,
        InProcessEngineClient(harness.engine),
        harness.tokenizer,
        ModelInfo.from_engine_info(harness.info),
        cancel_on_disconnect=True,
    )


async def wait_for_sequences(harness: Harness, count: int) -> None:
    """Until the engine holds ``count`` sequences (running or queued)."""
    client = InProcessEngineClient(harness.engine)
    for _ in range(500):
        stats = (await client.stats()).engine
        if stats.batch_size + stats.queue_size >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine never held {count} sequences")


# --- cancel on disconnect ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(LONG_REQUESTS))
def test_a_client_leaving_stops_its_non_streamed_generation(slow: Harness, path: str) -> None:
    app = cancelling_app(slow)

    async def scenario() -> OpenStream:
        request = OpenStream(app, path, LONG_REQUESTS[path])
        await wait_for_sequences(slow, 1)
        # At once, not after the ~90 tokens left.
        await request.finish(disconnect=True, timeout_s=1.0)
        return request

    request = asyncio.run(scenario())
    stats = slow.wait_until_idle()
    assert (stats.batch_size, stats.queue_size, stats.kv_blocks_used) == (0, 0, 0)
    assert request.body == b""
    metrics = falcon.testing.TestClient(app).simulate_get("/metrics").text
    assert 'tgi_request_failure{err="dropped"} 1' in metrics.splitlines()


def test_a_request_that_finishes_is_answered_in_a_cancelling_app(harness: Harness) -> None:
    app = cancelling_app(harness)
    payload = {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}

    async def scenario() -> OpenStream:
        request = OpenStream(app, "/generate", payload)
        await request.finish(timeout_s=30)
        return request

    request = asyncio.run(scenario())
    assert request.collector.status == 200
    assert json.loads(request.body)["generated_text"]


def send_and_keep(port: int, path: str, payload: Any) -> socket.socket:
    """A connection that has sent a POST and not read its answer."""
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(head.encode() + body)
    return conn


def test_clients_that_send_and_hang_up_free_their_slots(slow: Harness) -> None:
    server = ServedApp(cancelling_app(slow))
    short = {"inputs": "Hello", "parameters": {"max_new_tokens": 10, "details": True}}
    try:
        hung = [send_and_keep(server.port, path, LONG_REQUESTS[path]) for path in LONG_REQUESTS]
        with ThreadPoolExecutor(2) as pool:
            answers = [
                pool.submit(httpx.post, f"{server.url}/generate", json=short, timeout=60)
                for _ in range(2)
            ]
            asyncio.run(wait_for_sequences(slow, len(hung) + 2))
            for conn in hung:
                conn.close()
            results = [answer.result() for answer in answers]
        # The hung-up requests are gone long before their 90 tokens (4.5 s) could run.
        started = time.monotonic()
        stats = slow.wait_until_idle()
        assert time.monotonic() - started < 1.5
    finally:
        server.stop()
    assert (stats.batch_size, stats.queue_size, stats.kv_blocks_used) == (0, 0, 0)
    for result in results:
        assert result.status_code == 200, result.text
        assert result.json()["details"]["generated_tokens"] == 10


# --- admission before validation -----------------------------------------------------------


def test_beyond_the_limit_requests_are_refused_before_validation(slow: Harness) -> None:
    """One permit, held by an open stream: every generating request is refused at once,
    even one that validation would refuse; once the stream ends, validation answers."""
    app = slow.app(max_concurrent_requests=1)
    client = falcon.testing.TestClient(app)
    invalid = {"inputs": "Hello " * 50_000, "parameters": {"max_new_tokens": 2}}
    refused = {
        "/generate": invalid,
        "/": invalid,
        "/invocations": invalid,
        "/v1/completions": {"prompt": "Hello " * 50_000, "max_tokens": 2},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}]},
    }

    async def scenario() -> None:
        holder = OpenStream(app, "/generate_stream", {**LONG, "stream": True})
        await holder.wait_for(b'"index":2,')
        loop = asyncio.get_running_loop()
        for path, payload in refused.items():
            result = await loop.run_in_executor(
                None, lambda path=path, payload=payload: client.simulate_post(path, json=payload)
            )
            assert (result.status_code, result.json) == (429, OVERLOADED), path
        # /vertex answers any failed instance with its own 500, as TGI does.
        vertex = await loop.run_in_executor(
            None, lambda: client.simulate_post("/vertex", json={"instances": [LONG]})
        )
        assert vertex.status_code == 500
        streamed = OpenStream(app, "/generate_stream", invalid)
        assert (
            await streamed.finish()
            == b'data: {"error":"Model is overloaded","error_type":"overloaded"}\n\n'
        )
        await holder.finish(disconnect=True)

    asyncio.run(scenario())
    slow.wait_until_idle()
    too_long = client.simulate_post("/generate", json=invalid)
    assert too_long.status_code == 422
    assert too_long.json["error"].startswith("Input validation error: `inputs` tokens")
    metrics = client.simulate_get("/metrics").text.splitlines()
    assert 'tgi_request_failure{err="overloaded"} 7' in metrics
    assert "tgi_request_input_length_count 1" in metrics  # only the last one was validated


def test_best_of_takes_a_permit_per_sequence(harness: Harness) -> None:
    client = falcon.testing.TestClient(harness.app(max_concurrent_requests=1))
    parameters = {"max_new_tokens": 2, "best_of": 2, "do_sample": True}
    result = client.simulate_post("/generate", json={"inputs": "Hello", "parameters": parameters})
    assert (result.status_code, result.json) == (429, OVERLOADED)
    parameters["best_of"] = 1
    result = client.simulate_post("/generate", json={"inputs": "Hello", "parameters": parameters})
    assert result.status_code == 200, result.text


def test_permits_come_back_after_every_answer(harness: Harness) -> None:
    client = falcon.testing.TestClient(harness.app(max_concurrent_requests=1))
    short = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    failing = {"inputs": "Hello", "parameters": {"max_new_tokens": 0}}
    for payload, status in ((short, 200), (failing, 422), (short, 200), (short, 200)):
        assert client.simulate_post("/generate", json=payload).status_code == status
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for _ in range(2):
        assert client.simulate_post("/v1/chat/completions", json=chat).status_code == 200
    completions = {"prompt": ["Hello", "world"], "max_tokens": 2}
    # Two prompts need two permits: refused with one, then served with two.
    assert client.simulate_post("/v1/completions", json=completions).status_code == 429
    two = falcon.testing.TestClient(harness.app(max_concurrent_requests=2))
    assert two.simulate_post("/v1/completions", json=completions).status_code == 200


# --- bounds on what a worker holds ----------------------------------------------------------


def test_vertex_caps_its_instances(client: falcon.testing.TestClient) -> None:
    limit = HARNESS_LIMITS.max_client_batch_size
    instance = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    result = client.simulate_post("/vertex", json={"instances": [instance] * (limit + 1)})
    assert (result.status_code, result.json) == (
        422,
        {
            "error": f"Number of prompts exceeds the maximum allowed batch size of {limit}",
            "error_type": "batch size exceeded",
        },
    )
    served = client.simulate_post("/vertex", json={"instances": [instance] * limit})
    assert served.status_code == 200 and len(served.json["predictions"]) == limit


def test_gunicorn_workers_bound_their_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONCURRENT_REQUESTS", "7")
    try:
        conf = importlib.reload(gunicorn_conf)
        worker = conf.worker_class
        assert issubclass(worker, conf.UvicornWorker)
        assert worker.CONFIG_KWARGS["limit_concurrency"] == 2 * 7 + 64
    finally:
        monkeypatch.delenv("MAX_CONCURRENT_REQUESTS")
        importlib.reload(gunicorn_conf)


def test_metrics_answer_while_the_engine_is_stuck(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_resource, "STATS_TIMEOUT_S", 0.05)
    app = harness.app()
    client = falcon.testing.TestClient(app)
    harness.runner.step_delay_s = 0.5

    async def scenario() -> falcon.testing.Result:
        request = OpenStream(app, "/generate_stream", {**LONG, "stream": True})
        await request.wait_for(b'"index":1,')
        loop = asyncio.get_running_loop()
        scraped = await loop.run_in_executor(None, lambda: client.simulate_get("/metrics"))
        with contextlib.suppress(asyncio.TimeoutError):
            await request.finish(disconnect=True, timeout_s=2)
        return scraped

    try:
        scraped = asyncio.run(scenario())
        harness.runner.reset()
        harness.wait_until_idle()
    finally:
        harness.runner.reset()
    assert scraped.status_code == 200
    assert "tgi_request_count 1" in scraped.text.splitlines()
