"""Request ids, TGI's per-request log line and the OpenTelemetry traces of the generating routes.

Spans go to the SDK's in-memory exporter (names, nesting, parents, ``traceparent``), and
once through the real OTLP/HTTP exporter to a receiver on 127.0.0.1 that decodes what it
is sent with opentelemetry-proto, from an app served by uvicorn whose lifespan shutdown
flushes them. Log lines are read with ``caplog``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Iterator
from typing import Any

import falcon.testing
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tgi_core.settings.slices import ServerSettings
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine_client import InProcessEngineClient
from tgi_server.otlp_testing import OtlpReceiver
from tgi_server.request_log import rust_duration
from tgi_server.testing import (
    HARNESS_LIMITS,
    Harness,
    OpenStream,
    ServedApp,
    read_stream,
    sse_events,
)
from tgi_server.tracing import TracerCloser, otlp_traces_url, start_tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PROMPT = "The secret prompt"
GENERATE = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def app_over(harness: Harness, provider: TracerProvider | None) -> Any:
    harness.runner.reset()
    settings = ServerSettings(model_id="smollm2", limits=HARNESS_LIMITS)
    return create_app(
        settings,
        InProcessEngineClient(harness.engine),
        harness.tokenizer,
        ModelInfo.from_engine_info(harness.info),
        tracer_provider=provider,
    )


@pytest.fixture
def traced(harness: Harness, exporter: InMemorySpanExporter) -> falcon.testing.TestClient:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return falcon.testing.TestClient(app_over(harness, provider))


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def assert_request_tree(spans: tuple[ReadableSpan, ...], route: str) -> dict[str, ReadableSpan]:
    """The request span and its sequence's spans, nested and placed as TGI's router does."""
    named = by_name(spans)
    assert set(named) == {route, "validate", "queued", "infer", "prefill", "decode"}
    root = named[route]
    assert root.kind is SpanKind.SERVER
    root_id = root.context.span_id
    for child in ("validate", "queued", "infer"):
        assert parent_of(named[child]) == root_id, child
    for child in ("prefill", "decode"):
        assert parent_of(named[child]) == named["infer"].context.span_id, child
    assert {span.context.trace_id for span in spans} == {root.context.trace_id}
    order = [named[name] for name in ("validate", "queued", "prefill", "decode")]
    for earlier, later in itertools.pairwise(order):
        assert earlier.end_time is not None and later.start_time is not None
        assert earlier.end_time <= later.start_time, (earlier.name, later.name)
    assert root.start_time is not None and root.end_time is not None
    assert root.start_time <= named["validate"].start_time  # type: ignore[operator]
    assert named["decode"].end_time <= root.end_time  # type: ignore[operator]
    return named


def test_a_generate_request_is_a_trace_under_the_callers_traceparent(
    traced: falcon.testing.TestClient, exporter: InMemorySpanExporter
) -> None:
    result = traced.simulate_post("/generate", json=GENERATE, headers={"traceparent": TRACEPARENT})
    assert result.status_code == 200
    named = assert_request_tree(exporter.get_finished_spans(), "generate")
    root = named["generate"]
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert parent_of(root) == int(PARENT_ID, 16)
    attributes = dict(root.attributes or {})
    assert attributes["request_id"] == result.headers["x-request-id"]
    assert attributes["http.status_code"] == 200
    assert attributes["generated_tokens"] == 4 and attributes["finish_reason"] == "length"
    assert attributes["seed"] == "None"
    for name in ("total_time", "validation_time", "queue_time", "inference_time"):
        assert re.fullmatch(r"[0-9.]+(s|ms|µs|ns)", str(attributes[name])), name
    assert dict(named["infer"].attributes or {})["generated_tokens"] == 4


def test_without_traceparent_the_request_span_starts_a_trace(
    traced: falcon.testing.TestClient, exporter: InMemorySpanExporter
) -> None:
    traced.simulate_post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3})
    named = assert_request_tree(exporter.get_finished_spans(), "completions")
    assert named["completions"].parent is None


def test_a_stream_span_ends_with_its_stream(
    harness: Harness, exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = app_over(harness, provider)
    payload = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 3, "stream": True}
    collector, body = read_stream(app, "/v1/chat/completions", payload)
    assert sse_events(body)[-1] == "[DONE]"
    named = assert_request_tree(exporter.get_finished_spans(), "chat_completions")
    root = named["chat_completions"]
    assert dict(root.attributes or {})["generated_tokens"] == 3
    headers = dict(collector.headers)
    assert dict(root.attributes or {})["request_id"] == headers["x-request-id"]


def test_a_failed_validation_is_an_error_in_the_trace(
    traced: falcon.testing.TestClient, exporter: InMemorySpanExporter
) -> None:
    bad = {"inputs": PROMPT, "parameters": {"temperature": 0}}
    result = traced.simulate_post("/generate", json=bad)
    assert result.status_code == 422
    named = by_name(exporter.get_finished_spans())
    assert set(named) == {"generate", "validate"}
    message = "Input validation error: `temperature` must be strictly positive"
    for span in named.values():
        assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, message)
    assert parent_of(named["validate"]) == named["generate"].context.span_id


def test_the_request_id_is_the_callers_or_a_new_one(client: falcon.testing.TestClient) -> None:
    given = client.simulate_post("/generate", json=GENERATE, headers={"x-request-id": "req-42"})
    assert given.headers["x-request-id"] == "req-42"
    first = client.simulate_post("/generate", json=GENERATE).headers["x-request-id"]
    second = client.simulate_post("/generate", json=GENERATE).headers["x-request-id"]
    assert re.fullmatch("[0-9a-f]{32}", first) and first != second
    refused = client.simulate_post("/generate", json={"inputs": ""}, headers={"x-request-id": "a"})
    assert (refused.status_code, refused.headers["x-request-id"]) == (422, "a")
    assert "x-request-id" not in client.simulate_get("/info").headers


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "tgi_server.request_log"]


def test_one_success_line_per_request_in_tgis_form(
    client: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tgi_server")
    result = client.simulate_post(
        "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "seed": 7}}
    )
    request_id = result.headers["x-request-id"]
    [line] = request_lines(caplog)
    assert line.levelno == logging.INFO
    message = line.getMessage()
    pattern = (
        rf'generate\{{request_id="{request_id}" parameters=GenerateParameters \{{ best_of: 1, '
        r"do_sample: false, .*max_new_tokens: 4, .*\} "
        r'total_time="[0-9.]+(s|ms|µs)" validation_time="[0-9.]+(s|ms|µs|ns)" '
        r'queue_time="[0-9.]+(s|ms|µs|ns)" inference_time="[0-9.]+(s|ms|µs)" '
        r'time_per_token="[0-9.]+(s|ms|µs)" seed="None" finish_reason="length" '
        r"generated_tokens=4\}: Success"
    )
    assert re.fullmatch(pattern, message), message
    assert PROMPT not in message
    fields = line.fields["span"]  # type: ignore[attr-defined]  # --json-output's fields
    assert (fields["name"], fields["request_id"], fields["generated_tokens"]) == (
        "generate",
        request_id,
        4,
    )


def test_prompt_and_output_only_at_debug(
    client: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tgi_server.request_log")
    client.simulate_post("/generate", json=GENERATE)
    lines = request_lines(caplog)
    assert [line.levelno for line in lines] == [logging.INFO, logging.DEBUG, logging.DEBUG]
    assert lines[1].getMessage().endswith(f"}}: Input: {PROMPT}")
    assert re.search(r"\}: Output: .+", lines[2].getMessage())


def test_failures_are_logged_at_error_with_the_error(
    client: falcon.testing.TestClient, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tgi_server")
    client.simulate_post("/generate", json={"inputs": PROMPT, "parameters": {"top_k": 0}})
    app = app_over(harness, None)
    _, body = read_stream(app, "/generate_stream", {"inputs": PROMPT, "parameters": {"top_p": 1}})
    assert "error" in sse_events(body)[0]
    client.simulate_post("/generate", body=b"{", headers={"content-type": "application/json"})
    lines = request_lines(caplog)
    assert [(line.levelno, line.getMessage().split("{")[0]) for line in lines] == [
        (logging.ERROR, "generate"),
        (logging.ERROR, "generate_stream"),
    ]  # the undecodable body never reached TGI's handler: no line
    assert (
        lines[0]
        .getMessage()
        .endswith("}: Input validation error: `top_k` must be strictly positive")
    )
    assert re.search(
        r'total_time="[0-9.]+(s|ms|µs|ns)"\}: Input validation error: `top_p`',
        lines[1].getMessage(),
    )


def test_a_client_that_leaves_a_stream_is_a_warning(
    harness: Harness, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tgi_server")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = app_over(harness, provider)
    harness.runner.step_delay_s = 0.05
    payload = {"inputs": PROMPT, "parameters": {"max_new_tokens": 30}}

    async def leave_early() -> None:
        stream = OpenStream(app, "/generate_stream", payload)
        await stream.wait_for(b'"index":2,')
        await stream.finish(disconnect=True)

    try:
        asyncio.run(leave_early())
    finally:
        harness.runner.step_delay_s = 0.0
    [line] = request_lines(caplog)
    assert line.levelno == logging.WARNING
    assert re.fullmatch(
        r'generate_stream\{request_id="[0-9a-f]{32}" total_time="[^"]+"\}: client disconnected',
        line.getMessage(),
    )
    [root] = [span for span in exporter.get_finished_spans() if span.name == "generate_stream"]
    assert dict(root.attributes or {})["http.status_code"] == 499
    assert root.status.status_code is StatusCode.ERROR


def test_rust_duration() -> None:
    assert [rust_duration(s) for s in (2.5, 1.0, 0.0012345, 0.000073, 4e-9, 0.0)] == [
        "2.5s",
        "1s",
        "1.2345ms",
        "73µs",
        "4ns",
        "0ns",
    ]


def test_otlp_traces_url() -> None:
    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    assert otlp_traces_url("https://c/otel") == "https://c/otel/v1/traces"
    assert start_tracing(ServerSettings()) is None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


def test_traces_reach_an_otlp_http_collector(harness: Harness, receiver: OtlpReceiver) -> None:
    settings = ServerSettings(otlp_endpoint=receiver.endpoint, otlp_service_name="tgi-test")
    provider = start_tracing(settings)
    assert provider is not None
    app = app_over(harness, provider)
    app.add_middleware(TracerCloser(provider))  # as tgi_server.asgi does
    server = ServedApp(app)
    try:
        response = httpx.post(
            f"{server.url}/generate",
            json=GENERATE,
            headers={"traceparent": TRACEPARENT},
            timeout=60,
        )
        assert response.status_code == 200
    finally:
        server.stop()  # lifespan shutdown: the batch processor flushes
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    services = {service for service, _ in receiver.spans()}
    spans = [span for _, span in receiver.spans()]
    assert services == {"tgi-test"}
    names = {span.name for span in spans}
    assert names == {"generate", "validate", "queued", "infer", "prefill", "decode"}
    assert {span.trace_id.hex() for span in spans} == {TRACE_ID}
    [root] = [span for span in spans if span.name == "generate"]
    assert root.parent_span_id.hex() == PARENT_ID
    root_attributes = {a.key: a.value for a in root.attributes}
    assert root_attributes["request_id"].string_value == response.headers["x-request-id"]
