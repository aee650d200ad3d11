"""A second service, with an API key, two concurrent requests at most and JSON logs.

401 (the key), 429 (two streams hold both permits), ``--json-output``, and, last because it
ends this service, 424 and supervision: killing the engine process under a request in
flight fails that request with TGI's generation error, and the launcher takes Gunicorn
down with it and exits non-zero. Warmup is off here (the main service tests it) and
generations ignore EOS, so a stream lasts exactly its ``max_new_tokens``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import OverloadedError

from tgi_server.testing import LaunchedService, is_running, process_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_KEY = "Secret-Key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}
LONG = {"inputs": "Hi", "parameters": {"max_new_tokens": 200}}


@pytest.fixture(scope="module")
def guarded(launch: Any) -> Iterator[LaunchedService]:
    service: LaunchedService = launch(
        "guarded",
        "--workers", "1", "--api-key", API_KEY, "--max-concurrent-requests", "2", "--json-output",
        environ={"WARMUP_ENABLED": "false", "TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN": "true"},
    )  # fmt: skip
    yield service
    if service.process.poll() is None:
        tree = process_tree(service.pid)
        assert service.stop() == 0
        assert not [pid for pid in tree if is_running(pid)]


def call(
    service: LaunchedService, method: str, path: str, payload: Any = None, **headers: str
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    body = None if payload is None else json.dumps(payload)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_api_key_guards_the_generating_routes(guarded: LaunchedService) -> None:
    short = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
    assert call(guarded, "POST", "/generate", short) == (401, b"")
    assert call(guarded, "POST", "/generate", short, Authorization="Bearer nope") == (401, b"")
    assert call(guarded, "POST", "/generate", short, **AUTH)[0] == 200
    upper = {"Authorization": f"BEARER {API_KEY.upper()}"}  # compared case-insensitively
    assert call(guarded, "POST", "/generate", short, **upper)[0] == 200
    for path in ("/health", "/info", "/metrics", "/v1/models"):
        assert call(guarded, "GET", path)[0] == 200, path
    sdk = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=API_KEY, max_retries=0)
    assert sdk.completions.create(model="tgi", prompt="Hi", max_tokens=2).choices[0].text
    intruder = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.completions.create(model="tgi", prompt="Hi", max_tokens=2)
    hub = InferenceClient(model=guarded.url, provider="hf-inference", token=API_KEY)
    assert hub.text_generation("Hi", max_new_tokens=2, return_full_text=False)


def test_overload_is_a_429_while_streams_hold_every_permit(guarded: LaunchedService) -> None:
    with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=120) as client:
        with (
            client.stream("POST", "/generate_stream", json=LONG) as first,
            client.stream("POST", "/generate_stream", json=LONG) as second,
        ):
            # Keep the line iterators: closing one (as a dropped generator is) drops its
            # connection, which aborts the request and frees its permit.
            held = [response.iter_lines() for response in (first, second)]
            for lines in held:
                assert next(lines).startswith("data: ")
            refused = client.post("/generate", json=LONG)
            assert (refused.status_code, refused.json()) == (429, OVERLOADED)
            streamed = client.post("/generate_stream", json=LONG)
            assert streamed.status_code == 200
            assert streamed.content == (
                b'data: {"error":"Model is overloaded","error_type":"overloaded"}\n\n'
            )
            hub = InferenceClient(model=guarded.url, provider="hf-inference", token=API_KEY)
            with pytest.raises(OverloadedError):
                hub.text_generation("Hi", max_new_tokens=2)
            sdk = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=API_KEY, max_retries=0)
            with pytest.raises(openai.RateLimitError):
                sdk.completions.create(model="tgi", prompt="Hi", max_tokens=2)
        # The clients left: their requests are aborted and the permits come back.
        deadline = time.monotonic() + 30
        short = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
        while (answer := client.post("/generate", json=short)).status_code == 429:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert answer.status_code == 200


TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_json_output_is_one_object_per_line(guarded: LaunchedService) -> None:
    records = [json.loads(line) for line in guarded.log().splitlines() if line.startswith("{")]
    assert records
    for record in records:
        assert list(record) == ["timestamp", "level", "fields", "target"], record
        assert TIMESTAMP.match(record["timestamp"]) and "message" in record["fields"]
        assert record["level"] in ("DEBUG", "INFO", "WARN", "ERROR")
    targets = {record["target"] for record in records}
    assert {"tgi_server.launcher", "gunicorn.error", "uvicorn.error"} <= targets
    connected = {"target": "tgi_server.launcher", "fields": {"message": "Connected"}}
    assert any(connected.items() <= record.items() for record in records)


def engine_pid(service: LaunchedService) -> int:
    for pid in process_tree(service.pid):
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"tgi_server.engine" in command:
            return pid
    raise AssertionError("no engine process")


def test_killing_the_engine_fails_requests_and_takes_the_service_down(
    guarded: LaunchedService,
) -> None:
    tree = process_tree(guarded.pid)
    engine = engine_pid(guarded)
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(call, guarded, "POST", "/generate", LONG, **AUTH)
        deadline = time.monotonic() + 60
        while b"tgi_batch_current_size 1" not in call(guarded, "GET", "/metrics")[1]:
            assert time.monotonic() < deadline and not in_flight.done()
            time.sleep(0.1)
        os.kill(engine, signal.SIGKILL)
        status, body = in_flight.result(timeout=60)
    answer = json.loads(body)
    assert (status, answer["error_type"]) == (424, "generation")
    assert answer["error"].startswith("Request failed during generation: ")
    assert guarded.process.wait(120) != 0
    assert not [pid for pid in tree if is_running(pid)]
    assert '"Engine crashed' in guarded.log()
