"""Every error status of TGI's table (reference a.2) that a client can provoke, over HTTP.

Against the main service (no API key, 16 concurrent requests at most): 422 validation with
TGI's exact texts (plain, streamed as one SSE event, through the official clients' typed
exceptions), 422 tool, completion and Vertex errors, Vertex's 500 for a failed instance, the
body extractor's 400/415/413/422 plain-text rejections, and empty 404/405s. 401 and 429 need
other flags: ``test_guarded.py``; so does 424, which no request can cause on a healthy
engine (it is provoked there by killing the engine under a request in flight).

Not provocable by a client here: 503 (an unhealthy engine), 500 incomplete generation and
stream serialization (internal faults), and template errors (SmolLM2's chat template
renders any list of messages; the app's tests cover them with other templates).
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

from tgi_core.api import UNSUPPORTED_MEDIA_TYPE_MESSAGE
from tgi_server.http_errors import PAYLOAD_TOO_LARGE_MESSAGE
from tgi_server.testing import LaunchedService, sse_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = "Input validation error: "


def call(
    service: LaunchedService,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = "application/json",
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, headers (lower-case names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    headers = {} if content_type is None else {"Content-Type": content_type}
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        received = {name.lower(): value for name, value in response.getheaders()}
        return response.status, received, response.read()
    finally:
        connection.close()


def post(service: LaunchedService, path: str, payload: Any) -> tuple[int, Any]:
    status, _, body = call(service, "POST", path, json.dumps(payload).encode())
    return status, json.loads(body)


def num_tokens(service: LaunchedService, text: str) -> int:
    status, tokens = post(service, "/tokenize", {"inputs": text})
    assert status == 200
    return len(tokens)


def test_validation_errors_are_422_with_tgi_texts(service: LaunchedService) -> None:
    long_text = "word " * 300
    long_length = num_tokens(service, long_text)
    hi_length = num_tokens(service, "Hi")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.5}, "`top_p` must be > 0.0 and < 1.0"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
        (
            {"max_new_tokens": 600},
            f"`inputs` tokens + `max_new_tokens` must be <= 512. Given: {hi_length} "
            "`inputs` tokens and 600 `max_new_tokens`",
        ),
    ]
    for parameters, message in cases:
        status, answer = post(service, "/generate", {"inputs": "Hi", "parameters": parameters})
        assert (status, answer) == (422, {"error": PREFIX + message, "error_type": "validation"})
    assert 256 < long_length < 511
    status, answer = post(
        service, "/generate", {"inputs": long_text, "parameters": {"max_new_tokens": 1}}
    )
    assert (status, answer["error"]) == (
        422,
        f"{PREFIX}`inputs` must have less than 256 tokens. Given: {long_length}",
    )
    status, answer = post(service, "/generate", {"inputs": ""})
    assert (status, answer["error"]) == (422, PREFIX + "`inputs` cannot be empty")


def test_validation_errors_reach_the_clients_typed(service: LaunchedService) -> None:
    hub = InferenceClient(model=service.url, provider="hf-inference")
    with pytest.raises(ValidationError, match="`top_n_tokens` must be >= 0 and <= 5"):
        hub.text_generation("Hi", top_n_tokens=6)
    sdk = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.completions.create(model="tgi", prompt="Hi", max_tokens=600)
    assert raised.value.status_code == 422


def test_stream_errors_are_events_in_an_http_200(service: LaunchedService) -> None:
    body = json.dumps({"inputs": "Hi", "parameters": {"temperature": 0}}).encode()
    status, headers, streamed = call(service, "POST", "/generate_stream", body)
    assert (status, headers["content-type"]) == (200, "text/event-stream")
    assert streamed == (
        b'data: {"error":"Input validation error: `temperature` must be strictly positive",'
        b'"error_type":"validation"}\n\n'
    )
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 600, "stream": True}
    status, _, streamed = call(service, "POST", "/v1/chat/completions", json.dumps(chat).encode())
    error, done = sse_events(streamed)
    assert status == 200 and done == "[DONE]"
    assert error["error"]["http_status_code"] == 422
    assert error["error"]["message"].startswith(PREFIX + "`inputs` tokens + `max_new_tokens`")


def test_tool_completion_and_vertex_errors(service: LaunchedService) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    grammar = {"type": "json", "value": {"properties": {"a": {"type": "string"}}}}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "tools": [tool]}
    status, answer = post(service, "/v1/chat/completions", {**chat, "response_format": grammar})
    assert (status, answer) == (
        422,
        {
            "error": "Tool error: Grammar and tools are mutually exclusive",
            "error_type": "tool_error",
        },
    )
    status, answer = post(service, "/v1/completions", {"prompt": "Hi", "suffix": "!"})
    assert (status, answer) == (
        422,
        {
            "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
            "error_type": "suffix not supported",
        },
    )
    status, answer = post(service, "/v1/completions", {"prompt": ["a", "b", "c", "d", "e"]})
    assert (status, answer) == (
        422,
        {
            "error": "Number of prompts exceeds the maximum allowed batch size of 4",
            "error_type": "batch size exceeded",
        },
    )
    status, answer = post(service, "/vertex", {"instances": []})
    assert (status, answer) == (
        422,
        {"error": "Input validation error", "error_type": "Input validation error"},
    )
    failing = {"instances": [{"inputs": "Hi", "parameters": {"max_new_tokens": 600}}]}
    status, answer = post(service, "/vertex", failing)
    assert (status, answer) == (
        500,
        {"error": "Incomplete generation", "error_type": "Incomplete generation"},
    )


def test_malformed_bodies_are_plain_text_rejections(service: LaunchedService) -> None:
    status, headers, body = call(service, "POST", "/generate", b"{")
    assert (status, headers["content-type"]) == (400, "text/plain; charset=utf-8")
    assert body == (
        b"Failed to parse the request body as JSON: EOF while parsing an object at line 1 column 1"
    )
    status, _, body = call(service, "POST", "/generate", b'{"parameters":{}}')
    assert status == 422
    assert body.startswith(b"Failed to deserialize the JSON body into the target type: ")
    status, _, body = call(service, "POST", "/generate", b'{"inputs":"Hi"}', "text/plain")
    assert (status, body.decode()) == (415, UNSUPPORTED_MEDIA_TYPE_MESSAGE)
    status, _, body = call(service, "POST", "/generate", b'{"inputs":"Hi"}', None)
    assert (status, body.decode()) == (415, UNSUPPORTED_MEDIA_TYPE_MESSAGE)
    oversized = json.dumps({"inputs": "a" * 2_000_000}).encode()  # --payload-limit 2000000
    status, _, body = call(service, "POST", "/generate", oversized)
    assert (status, body.decode()) == (413, PAYLOAD_TOO_LARGE_MESSAGE)


def test_unknown_paths_and_methods_are_empty_404_and_405(service: LaunchedService) -> None:
    assert call(service, "GET", "/nope", content_type=None)[::2] == (404, b"")
    assert call(service, "POST", "/v2/generate", b"{}")[::2] == (404, b"")
    assert call(service, "GET", "/generate", content_type=None)[::2] == (405, b"")
    assert call(service, "DELETE", "/info", content_type=None)[::2] == (405, b"")
