"""Issue 12's hostile requests against the real launcher: each is answered as TGI would,
and three streams that were generating when it came in end untouched.

One service for the module: an API key, one Gunicorn worker (so that its permits are the
service's: the 429 case is decided by the worker before any validation), 16 concurrent
requests at most, warmup off, EOS ignored (a stream lasts its ``max_new_tokens`` exactly)
and room for 2000 new tokens, so that a request held by a client who left would hold its
slot for a minute or more.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tgi_server.testing import LaunchedService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_KEY = "Hostile-Test-Key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_CONCURRENT = 16
HELD_TOKENS = 2000  # a held request would run for minutes on 2 cores
OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}
SYNTAX = "Failed to parse the request body as JSON: "


@pytest.fixture(scope="module")
def hostile(launch: Any, stop_and_check: Any) -> Iterator[LaunchedService]:
    service = launch(
        "hostile",
        "--workers", "1", "--api-key", API_KEY,
        "--max-concurrent-requests", str(MAX_CONCURRENT),
        limits=(
            "--dtype", "float32", "--max-input-tokens", "256", "--max-total-tokens", "2304",
            "--max-batch-prefill-tokens", "512", "--max-batch-size", "16",
        ),
        environ={"WARMUP_ENABLED": "false", "TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN": "true"},
    )  # fmt: skip
    yield service
    stop_and_check(service)


def call(
    service: LaunchedService, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """One raw POST (the path is sent as written): status, content type, body."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    try:
        sent = {"Content-Type": "application/json", **(AUTH if headers is None else headers)}
        connection.request("POST", path, body, sent)
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def post(service: LaunchedService, path: str, payload: Any) -> tuple[int, Any]:
    status, _, body = call(service, path, json.dumps(payload).encode())
    return status, json.loads(body)


def invalid(message: str) -> tuple[int, dict[str, str]]:
    return 422, {"error": f"Input validation error: {message}", "error_type": "validation"}


def generate(**parameters: Any) -> dict[str, Any]:
    return {"inputs": "Name a colour:", "parameters": {"max_new_tokens": 8, **parameters}}


# --- the API key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["//generate", "///generate", "/%2Fgenerate", "//v1/chat/completions"]
)
def test_non_canonical_paths_do_not_bypass_the_api_key(
    hostile: LaunchedService, background_streams: Any, path: str
) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    canonical = "/v1/chat/completions" if "chat" in path else "/generate"
    body = json.dumps(chat if "chat" in path else generate()).encode()
    with background_streams(hostile, AUTH):
        assert call(hostile, path, body, headers={})[::2] == (404, b"")
        assert call(hostile, path, body)[::2] == (404, b"")  # TGI routes none of them
        assert call(hostile, canonical, body, headers={})[::2] == (401, b"")


# --- sampling parameters beyond float32 ---------------------------------------------------------

GRAMMAR = {"type": "regex", "value": "(red|green|blue)( and (red|green|blue))?"}


@pytest.mark.parametrize("grammar", [None, GRAMMAR], ids=["plain", "grammar"])
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"temperature": 1e39},
            "`temperature` must be a finite float32 number. Given: 1e+39",
        ),
        ({"temperature": 1e-50}, "`temperature` must be strictly positive"),
        ({"repetition_penalty": 1e-50}, "`repetition_penalty` must be strictly positive"),
    ],
    ids=["temperature-1e39", "temperature-1e-50", "repetition_penalty-1e-50"],
)
def test_sampling_values_beyond_float32_are_refused(
    hostile: LaunchedService,
    background_streams: Any,
    parameters: dict[str, Any],
    message: str,
    grammar: Any,
) -> None:
    payload = generate(do_sample=True, grammar=grammar, **parameters)
    with background_streams(hostile, AUTH):
        assert post(hostile, "/generate", payload) == invalid(message)


@pytest.mark.parametrize(
    "parameters",
    [{"temperature": 3e38}, {"temperature": 1e-30}, {"repetition_penalty": 1e-30}],
    ids=["temperature-3e38", "temperature-1e-30", "repetition_penalty-1e-30"],
)
def test_extreme_float32_sampling_under_a_grammar_still_follows_it(
    hostile: LaunchedService, background_streams: Any, parameters: dict[str, Any]
) -> None:
    # In range for float32, yet the scores are no distribution: the row takes its masked
    # argmax, which the grammar allows, instead of a NaN sample that fails the batch.
    payload = generate(do_sample=True, grammar=GRAMMAR, max_new_tokens=12, **parameters)
    with background_streams(hostile, AUTH):
        status, answer = post(hostile, "/generate", payload)
    assert status == 200, answer
    assert re.fullmatch(GRAMMAR["value"], answer["generated_text"]), answer


# --- grammars and stops too big for the engine ------------------------------------------------


@pytest.mark.parametrize(
    "grammar",
    [
        {"type": "json", "value": {"properties": {"a": {"type": "string", "maxLength": 20000}}}},
        {"type": "regex", "value": r"[\s\S]{0,20000}"},
    ],
    ids=["schema-maxLength-20000", "regex-20000"],
)  # fmt: skip
def test_grammars_too_big_to_compile_are_refused(
    hostile: LaunchedService, background_streams: Any, grammar: Any
) -> None:
    with background_streams(hostile, AUTH):
        status, answer = post(hostile, "/generate", generate(grammar=grammar))
    # Refused by the HTTP worker: the engine never compiles it (minutes over the vocabulary).
    assert status == 422, answer
    assert answer["error"].startswith("Input validation error: grammar is too complex: "), answer


def test_four_400k_character_stop_sequences_are_refused(
    hostile: LaunchedService, background_streams: Any
) -> None:
    stops = [letter * 400_000 for letter in "abcd"]  # 1.6 MB: under the 2 MB payload limit
    with background_streams(hostile, AUTH):
        answer = post(hostile, "/generate", generate(stop=stops))
    assert answer == invalid("`stop` sequences must have at most 300 characters. Given: 400000")


# --- deeply nested JSON ------------------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


CHAT = '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4'
DEEP_BODIES = {
    "body-100000": ("/generate", '{"inputs":' + "[" * 100_000 + "]" * 100_000 + "}"),
    "grammar-object-5000": (
        "/generate",
        '{"inputs":"Hi","parameters":{"grammar":{"type":"json","value":' + nested(5000) + "}}}",
    ),
    "tools-5000": (
        "/v1/chat/completions",
        CHAT + ',"tools":[{"type":"function","function":{"name":"f","parameters":'
        + nested(5000) + "}}]}",
    ),
    "response_format-5000": (
        "/v1/chat/completions",
        CHAT + ',"response_format":{"type":"json_object","value":' + nested(5000) + "}}",
    ),
    "vertex-5000": ("/vertex", '{"instances":[' + nested(5000) + "]}"),
    "invocations-5000": ("/invocations", '{"inputs":"Hi","parameters":' + nested(5000) + "}"),
}  # fmt: skip


@pytest.mark.parametrize(("path", "body"), DEEP_BODIES.values(), ids=DEEP_BODIES.keys())
def test_deeply_nested_bodies_are_400s(
    hostile: LaunchedService, background_streams: Any, path: str, body: str
) -> None:
    with background_streams(hostile, AUTH):
        status, content_type, answer = call(hostile, path, body.encode())
    assert (status, content_type) == (400, "text/plain; charset=utf-8"), answer[:200]
    assert answer.decode().startswith(SYNTAX + "recursion limit exceeded at line 1 column ")


@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
def test_a_deeply_nested_grammar_string_is_a_validation_error(
    hostile: LaunchedService, background_streams: Any, route: str
) -> None:
    grammar = {"type": "json", "value": nested(5000)}  # a string: the body itself is shallow
    expected = invalid("grammar is not valid: schema nested too deeply")
    with background_streams(hostile, AUTH):
        status, _, answer = call(hostile, route, json.dumps(generate(grammar=grammar)).encode())
    if route == "/generate":
        assert (status, json.loads(answer)) == expected
    else:  # TGI streams its errors: one event in a 200, never an empty body
        assert status == 200
        assert (
            answer == b"data: " + json.dumps(expected[1], separators=(",", ":")).encode() + b"\n\n"
        )


# --- load: clients who leave, and the 429 that comes before any work ---------------------------


def engine_load(service: LaunchedService) -> int:
    """Sequences the engine holds: running plus queued (from ``/metrics``)."""
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    gauges = dict(re.findall(r"^(tgi_queue_size|tgi_batch_current_size) (\d+)$", text, re.M))
    return int(gauges["tgi_queue_size"]) + int(gauges["tgi_batch_current_size"])


def hold(service: LaunchedService, count: int) -> list[socket.socket]:
    """``count`` non-streamed requests for ``HELD_TOKENS`` tokens on raw sockets, each
    admitted by the engine when this returns; closing a socket is its client leaving."""
    body = json.dumps(generate(max_new_tokens=HELD_TOKENS)).encode()
    head = (
        f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    before = engine_load(service)
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", service.port), timeout=60)
        client.sendall(head + body)
        clients.append(client)
    deadline = time.monotonic() + 60
    while engine_load(service) < before + count:
        assert time.monotonic() < deadline, "the held requests did not reach the engine"
        time.sleep(0.1)
    return clients


def wait_for_a_slot(service: LaunchedService, timeout_s: float) -> httpx.Response:
    """The first answer to a short request that is not a 429, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.post(
            f"{service.url}/generate", json=generate(max_new_tokens=2), headers=AUTH, timeout=60
        )
        if answer.status_code != 429 or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_clients_who_hang_up_give_their_slots_back(
    hostile: LaunchedService, background_streams: Any
) -> None:
    with background_streams(hostile, AUTH):
        clients = hold(hostile, MAX_CONCURRENT - 3)  # every slot the streams left
        assert post(hostile, "/generate", generate()) == (429, OVERLOADED)
        for client in clients:
            client.close()
        # Held, they would run HELD_TOKENS steps (minutes); gone, they are aborted at once.
        answer = wait_for_a_slot(hostile, timeout_s=20)
    assert answer.status_code == 200, answer.text


def test_a_2mb_prompt_past_the_limit_is_a_429_before_any_work(
    hostile: LaunchedService, background_streams: Any
) -> None:
    prompt = "hello " * 333_000  # ~2 MB, just under the 2 MB payload limit
    with background_streams(hostile, AUTH):
        clients = hold(hostile, MAX_CONCURRENT - 3)
        try:
            answer = post(hostile, "/generate", {"inputs": prompt})
        finally:
            for client in clients:
                client.close()
    # Validated first, its 333,001 tokens (a second of tokenization) would be a 422 for
    # `inputs` past 256 tokens: the 429 says the worker's permit was checked before.
    assert answer == (429, OVERLOADED)
    assert wait_for_a_slot(hostile, timeout_s=20).status_code == 200
