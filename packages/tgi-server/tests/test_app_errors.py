"""Every error status TGI answers, through the real app over a real engine on a thread.

The engine runs tgi_scheduler's FakeRunner (tokens are ``last + 1``), so failures can be
scripted: a runner that raises (424), one slow enough to hold streams open (429). Requests
and answers go through the real SmolLM2 tokenizer. Non-stream requests use Falcon's
``TestClient``; streams call the ASGI app directly with Falcon's test emitters, so the
test decides when the client goes away (``tgi_server.testing``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from tgi_core.tokenization import ChatTemplate, Tokenizer
from tgi_server.testing import Harness, OpenStream, smollm2_tokenizer, stream_request

TOKENIZER = smollm2_tokenizer()
# TGI's words for a failed step of the test runner (whose exception says which step)
GENERATION_FAILURE = re.compile(
    r"Request failed during generation: Server error: scripted failure at step \d+"
)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    """Two requests at most, so that a third is refused with 429."""
    harness = Harness(max_concurrent_requests=2)
    yield harness
    harness.stop()


# --- malformed bodies: axum's plain-text rejections -----------------------------------


def test_a_body_that_is_not_json_is_a_400_in_plain_text(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post(
        "/generate", body="{", headers={"content-type": "application/json"}
    )
    assert result.status_code == 400
    assert result.headers["content-type"] == "text/plain; charset=utf-8"
    assert result.text == (
        "Failed to parse the request body as JSON: EOF while parsing an object at line 1 column 1"
    )


def test_a_body_of_the_wrong_shape_is_a_422_in_plain_text(
    client: falcon.testing.TestClient,
) -> None:
    result = client.simulate_post("/generate", json={"parameters": {}})
    assert result.status_code == 422
    assert (
        result.text
        == "Failed to deserialize the JSON body into the target type: missing field `inputs`"
    )
    result = client.simulate_post("/generate", json={"inputs": "a", "parameters": {"top_k": "x"}})
    assert result.status_code == 422
    assert result.text == (
        "Failed to deserialize the JSON body into the target type: "
        "parameters.top_k: invalid type: str, expected int | null"
    )


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml"])
def test_a_body_that_is_not_declared_json_is_a_415(
    client: falcon.testing.TestClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    result = client.simulate_post("/v1/completions", body='{"prompt": "a"}', headers=headers)
    assert result.status_code == 415
    assert result.text == "Expected request with `Content-Type: application/json`"


def test_json_with_parameters_or_a_json_suffix_is_accepted(
    client: falcon.testing.TestClient,
) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        result = client.simulate_post(
            "/tokenize", body='{"inputs": "Hello"}', headers={"content-type": content_type}
        )
        assert result.status_code == 200, result.text


def test_a_body_over_the_payload_limit_is_a_413(harness: Harness) -> None:
    client = falcon.testing.TestClient(harness.app(payload_limit=64))
    result = client.simulate_post("/generate", json={"inputs": "x" * 100})
    assert result.status_code == 413
    assert result.text == "Failed to buffer the request body: length limit exceeded"
    assert client.simulate_post("/tokenize", json={"inputs": "short"}).status_code == 200


# --- routing and the API key -----------------------------------------------------------


def test_unknown_paths_and_wrong_methods_have_empty_bodies(
    client: falcon.testing.TestClient,
) -> None:
    missing = client.simulate_get("/nope")
    assert (missing.status_code, missing.content) == (404, b"")
    assert "content-type" not in missing.headers
    wrong = client.simulate_get("/generate")
    assert (wrong.status_code, wrong.content) == (405, b"")
    assert "POST" in wrong.headers["allow"]
    assert client.simulate_post("/health", json={}).status_code == 405


def test_the_api_key_guards_the_generating_routes_only(harness: Harness) -> None:
    client = falcon.testing.TestClient(harness.app(api_key="s3cret"))
    payload = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        result = client.simulate_post("/generate", json=payload, headers=headers)
        assert (result.status_code, result.content) == (401, b"")
    # The whole value is compared case-insensitively, as TGI does.
    for value in ("Bearer s3cret", "bearer S3CRET"):
        result = client.simulate_post("/generate", json=payload, headers={"Authorization": value})
        assert result.status_code == 200, result.text
    for path in ("/", "/v1/chat/completions", "/v1/completions", "/tokenize", "/invocations"):
        assert client.simulate_post(path, json={}).status_code == 401, path
    # The 401 comes before the body is even looked at.
    assert client.simulate_post("/vertex", body="{").status_code == 401
    for path in ("/", "/health", "/info", "/metrics", "/v1/models"):
        assert client.simulate_get(path).status_code == 200, path
    assert client.simulate_get("/nope").status_code == 404


def test_cors_answers_preflights_and_lists_allowed_origins(harness: Harness) -> None:
    any_origin = falcon.testing.TestClient(harness.app())
    result = any_origin.simulate_get("/info", headers={"Origin": "https://a.example"})
    assert result.headers["access-control-allow-origin"] == "*"
    preflight = any_origin.simulate_options(
        "/generate",
        headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-methods"] == "GET,POST"
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    listed = falcon.testing.TestClient(harness.app(cors_allow_origin=("https://a.example",)))
    allowed = listed.simulate_get("/info", headers={"Origin": "https://a.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://a.example"
    refused = listed.simulate_get("/info", headers={"Origin": "https://b.example"})
    assert "access-control-allow-origin" not in refused.headers


# --- validation: TGI's messages, as JSON or as one stream event ------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
        (
            {"max_new_tokens": 200},
            "`inputs` tokens + `max_new_tokens` must be <= 96. Given: 1 `inputs` tokens "
            "and 200 `max_new_tokens`",
        ),
    ],
)
def test_validation_errors_are_422_with_tgi_messages(
    client: falcon.testing.TestClient, parameters: dict[str, Any], message: str
) -> None:
    result = client.simulate_post("/generate", json={"inputs": "Hello", "parameters": parameters})
    assert result.status_code == 422
    assert result.headers["content-type"] == "application/json"
    assert (
        result.content
        == json.dumps(
            {"error": f"Input validation error: {message}", "error_type": "validation"},
            separators=(",", ":"),
        ).encode()
    )


def test_too_long_inputs_are_refused(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post(
        "/generate", json={"inputs": "Hello " * 80, "parameters": {"max_new_tokens": 1}}
    )
    assert result.status_code == 422
    assert result.json["error"] == (
        "Input validation error: `inputs` must have less than 64 tokens. Given: 81"
    )
    truncated = client.simulate_post(
        "/generate",
        json={"inputs": "Hello " * 80, "parameters": {"max_new_tokens": 1, "truncate": 10}},
    )
    assert truncated.status_code == 200
    assert truncated.headers["x-prompt-tokens"] == "10"


def test_stream_errors_are_one_event_in_an_http_200(harness: Harness) -> None:
    app = harness.app()
    cases = [
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        (
            {"best_of": 2, "do_sample": True},
            "`best_of` != 1 is not supported when streaming tokens",
        ),
        (
            {"decoder_input_details": True},
            "`decoder_input_details` == true is not supported when streaming tokens",
        ),
    ]
    for parameters, message in cases:
        collector = stream_request(
            app, "/generate_stream", {"inputs": "Hi", "parameters": parameters}
        )
        assert collector.status == 200
        body = json.dumps(
            {"error": f"Input validation error: {message}", "error_type": "validation"},
            separators=(",", ":"),
        )
        assert b"".join(collector.body_chunks) == f"data: {body}\n\n".encode()


def test_chat_stream_errors_are_openai_events_followed_by_done(harness: Harness) -> None:
    payload = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 500, "stream": True}
    collector = stream_request(harness.app(), "/v1/chat/completions", payload)
    assert collector.status == 200
    events = b"".join(collector.body_chunks).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    error = json.loads(events[0].removeprefix("data: "))
    assert error["error"]["http_status_code"] == 422
    assert error["error"]["message"].startswith(
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 96. Given: "
    )


# --- OpenAI-specific refusals -----------------------------------------------------------


def test_completions_refuse_a_suffix_and_too_many_prompts(
    client: falcon.testing.TestClient,
) -> None:
    suffix = client.simulate_post("/v1/completions", json={"prompt": "a", "suffix": "b"})
    assert suffix.status_code == 422
    assert suffix.json == {
        "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
        "error_type": "suffix not supported",
    }
    many = client.simulate_post("/v1/completions", json={"prompt": ["a"] * 5, "max_tokens": 2})
    assert many.status_code == 422
    assert many.json == {
        "error": "Number of prompts exceeds the maximum allowed batch size of 4",
        "error_type": "batch size exceeded",
    }
    empty = client.simulate_post("/v1/completions", json={"prompt": []})
    assert empty.status_code == 422
    assert "Empty array detected" in empty.text


def test_tool_errors(client: falcon.testing.TestClient) -> None:
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    messages = [{"role": "user", "content": "Hi"}]
    both = client.simulate_post(
        "/v1/chat/completions",
        json={
            "messages": messages,
            "tools": [tool],
            "response_format": {"type": "json", "value": {}},
        },
    )
    assert (both.status_code, both.json) == (
        422,
        {
            "error": "Tool error: Grammar and tools are mutually exclusive",
            "error_type": "tool_error",
        },
    )
    unknown = client.simulate_post(
        "/v1/chat/completions", json={"messages": messages, "tools": [tool], "tool_choice": "nope"}
    )
    assert (unknown.status_code, unknown.json["error"]) == (
        422,
        "Tool error: Tool with name nope not found",
    )
    unused = client.simulate_post(
        "/v1/chat/completions",
        json={"messages": messages, "tools": [tool], "tool_choice": "none", "max_tokens": 2},
    )
    assert unused.status_code == 200, unused.text


def test_template_errors(harness: Harness) -> None:
    messages = {"messages": [{"role": "user", "content": "Hi"}]}
    bare = Tokenizer(TOKENIZER.backend, eos_token="<|im_end|>")
    no_template = falcon.testing.TestClient(harness.app(tokenizer=bare))
    result = no_template.simulate_post("/v1/chat/completions", json=messages)
    assert (result.status_code, result.json) == (
        422,
        {"error": "Template error: template not found", "error_type": "template_error"},
    )
    assert no_template.simulate_post("/chat_tokenize", json=messages).status_code == 422
    raising = Tokenizer(
        TOKENIZER.backend, chat_template=ChatTemplate("{{ raise_exception('no system role') }}")
    )
    result = falcon.testing.TestClient(harness.app(tokenizer=raising)).simulate_post(
        "/v1/chat/completions", json=messages
    )
    assert (result.status_code, result.json["error"]) == (422, "Template error: no system role")


# --- the engine's refusals and failures -------------------------------------------------


def test_overload_is_a_429_and_permits_come_back(harness: Harness) -> None:
    """With max_concurrent_requests=2 held by two open streams, a third request is
    refused at once; when the streams' clients leave, requests are admitted again."""
    harness.runner.step_delay_s = 0.05
    app = harness.app()
    client = falcon.testing.TestClient(app)
    payload = {"inputs": "Hello", "parameters": {"max_new_tokens": 80}}

    async def scenario() -> None:
        holders = [OpenStream(app, "/generate_stream", payload) for _ in range(2)]
        for holder in holders:
            await holder.wait_for(b'"index":2')
        loop = asyncio.get_running_loop()
        refused = await loop.run_in_executor(
            None, lambda: client.simulate_post("/generate", json=payload)
        )
        assert refused.status_code == 429
        assert refused.json == {"error": "Model is overloaded", "error_type": "overloaded"}
        streamed = OpenStream(app, "/generate_stream", payload)
        assert await streamed.finish() == (
            b'data: {"error":"Model is overloaded","error_type":"overloaded"}\n\n'
        )
        for holder in holders:
            await holder.finish(disconnect=True)

    asyncio.run(scenario())
    harness.runner.step_delay_s = 0.0
    result = client.simulate_post(
        "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    )
    assert result.status_code == 200, result.text
    metrics = client.simulate_get("/metrics").text
    assert 'tgi_request_failure{err="overloaded"} 2' in metrics
    assert 'tgi_request_failure{err="dropped"} 2' in metrics


def test_a_failing_runner_is_a_424_and_makes_the_server_unhealthy(harness: Harness) -> None:
    client = falcon.testing.TestClient(harness.app())
    harness.runner.broken.set()
    try:
        result = client.simulate_post(
            "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}
        )
        assert result.status_code == 424
        assert result.json["error_type"] == "generation"
        # the engine sends the runner's text alone; the server words it as TGI does
        assert GENERATION_FAILURE.fullmatch(result.json["error"]), result.json
        unhealthy = client.simulate_get("/health")
        assert (unhealthy.status_code, unhealthy.json) == (
            503,
            {"error": "unhealthy", "error_type": "healthcheck"},
        )
        streamed = stream_request(harness.app(), "/generate_stream", {"inputs": "Hi"})
        event = json.loads(b"".join(streamed.body_chunks).decode().removeprefix("data: "))
        assert event["error_type"] == "generation"
        assert GENERATION_FAILURE.fullmatch(event["error"]), event
    finally:
        harness.runner.broken.clear()
    healthy = client.simulate_get("/health")
    assert (healthy.status_code, healthy.content) == (200, b"")
    assert 'tgi_request_failure{err="generation"}' in client.simulate_get("/metrics").text
