"""The service routes and what crosses the wire, through the real app over a real engine.

The engine (on a thread) runs tgi_scheduler's FakeRunner, slowed down where a test needs
a generation in flight. ``/info``, ``/v1/models``, the health routes, ``/metrics`` (with
TGI's names, and merged across worker processes), the OpenAPI document and the docs page,
SKIP_TOKENIZER_IN_TGI, SSE keep-alives, and a client disconnect stopping its generation at
once: through the ASGI interface, then over real sockets (uvicorn) with real clients
(the OpenAI SDK, huggingface_hub, httpx).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import httpx
import pytest

from tgi_core.settings.slices import ServerSettings
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine_client import InProcessEngineClient
from tgi_server.metrics import ServerMetrics
from tgi_server.streaming import EventStream
from tgi_server.testing import HARNESS_LIMITS, Harness, OpenStream, ServedApp, smollm2_tokenizer

COMPACT = {"separators": (",", ":"), "ensure_ascii": False}
TOKENIZER = smollm2_tokenizer()


@pytest.fixture(scope="module")
def server(harness: Harness) -> Iterator[ServedApp]:
    server = ServedApp(harness.app())
    yield server
    server.stop()


# --- service routes -------------------------------------------------------------------------


def test_info_models_health(client: falcon.testing.TestClient) -> None:
    info = client.simulate_get("/info")
    assert (
        info.content
        == json.dumps(
            {
                "model_id": "smollm2",
                "model_sha": None,
                "model_pipeline_tag": None,
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": 64,
                "max_total_tokens": 96,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "0.1.0",
                "sha": None,
                "docker_label": None,
                # ours, from the engine: FakeRunner has no dtype, device or kernels
                "model_dtype": None,
                "model_device_type": None,
                "compute_path": None,
                "warmup_seconds": 0.0,
                "lora_adapters": [],
            },
            **COMPACT,
        ).encode()
    )
    models = client.simulate_get("/v1/models")
    assert models.content == (
        b'{"object":"list","data":[{"id":"smollm2","object":"model","created":0,"owned_by":"smollm2"}]}'
    )
    for path in ("/health", "/ping", "/"):
        result = client.simulate_get(path)
        assert (result.status_code, result.content) == (200, b""), path
        assert "content-type" not in result.headers


def test_openapi_document_covers_every_route(client: falcon.testing.TestClient) -> None:
    document = client.simulate_get("/api-doc/openapi.json").json
    assert document["openapi"] == "3.1.0"
    methods = {path: sorted(item) for path, item in document["paths"].items()}
    posts = ["/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions"]
    posts += ["/vertex", "/invocations", "/tokenize", "/chat_tokenize"]
    gets = ["/health", "/ping", "/info", "/metrics", "/v1/models"]
    assert methods == {
        "/": ["get", "post"],
        **{path: ["post"] for path in posts},
        **{path: ["get"] for path in gets},
    }
    schemas = document["components"]["schemas"]
    refs = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.update(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)
    assert schemas["SagemakerRequest"]["anyOf"][1] == {"$ref": "#/components/schemas/ChatRequest"}
    assert {"GenerateParameters", "ChatCompletionChunk", "VertexRequest", "Info"} <= set(schemas)
    page = client.simulate_get("/docs")
    assert (
        page.headers["content-type"].startswith("text/html")
        and "/api-doc/openapi.json" in page.text
    )


def test_metrics_have_tgi_names(client: falcon.testing.TestClient) -> None:
    client.simulate_post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    client.simulate_post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 0}})
    text = client.simulate_get("/metrics").text
    lines = text.splitlines()
    for expected in (
        "# TYPE tgi_request_count counter",
        "tgi_request_count 2",
        "tgi_request_success 1",
        'tgi_request_failure{err="validation"} 1',
        "# TYPE tgi_request_duration histogram",
        'tgi_request_duration_bucket{le="0.00015000000000000001"} 0',
        "tgi_request_duration_count 1",
        "tgi_request_generated_tokens_count 1",
        'tgi_request_input_length_bucket{le="0.64"} 0',
        "tgi_request_input_length_count 1",
        'tgi_request_max_new_tokens_bucket{le="1.92"} 0',
        'tgi_request_max_new_tokens_bucket{le="2.88"} 1',
        "tgi_queue_size 0",
        "tgi_batch_current_size 0",
        "# TYPE tgi_batch_inference_count counter",
        "tgi_kv_blocks_used 0",
        "tgi_unwarmed_shapes 0",
    ):
        assert expected in lines, expected
    values = {line.split(" ")[0]: line.split(" ")[1] for line in lines if not line.startswith("#")}
    assert (
        values["tgi_kv_blocks_free"] == values["tgi_kv_blocks_total"] == "63"
    )  # block 0 is reserved
    assert any(line.startswith('tgi_batch_inference_count{method="prefill"} ') for line in lines)
    assert any(line.startswith("tgi_warmup_shapes ") for line in lines)
    names = {key.split("{")[0] for key in values}
    assert not {name for name in names if name.endswith("_total")} - {"tgi_kv_blocks_total"}
    assert "_created" not in text
    assert sum(line.startswith("tgi_request_duration_bucket") for line in lines) == 36


def test_warmup_metrics_come_from_the_engine_when_the_worker_starts(harness: Harness) -> None:
    settings = ServerSettings(model_id="smollm2", limits=HARNESS_LIMITS)
    engine = InProcessEngineClient(harness.engine)
    app = create_app(settings, engine, TOKENIZER, ModelInfo(model_id="smollm2"))
    lines = falcon.testing.TestClient(app).simulate_get("/metrics").text.splitlines()
    assert harness.info.warmup is not None
    assert f"tgi_warmup_shapes {harness.info.warmup.num_shapes}" in lines


def test_metrics_of_several_workers_are_merged(tmp_path: Path) -> None:
    """Workers in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set by the launcher) each
    record requests; whichever answers /metrics reports them all."""
    record = (
        "from tgi_core.settings.slices import ValidationLimits\n"
        "from tgi_server.metrics import ServerMetrics\n"
        f"m = ServerMetrics(ValidationLimits(), multiprocess_dir={str(tmp_path)!r})\n"
        "m.request_count.inc(); m.record_failure('validation'); m.input_length.observe(3)\n"
        "print(m.render(None, None).decode())\n"
    )
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    outputs = [
        subprocess.run(
            [sys.executable, "-c", record], env=environ, check=True, capture_output=True, text=True
        ).stdout
        for _ in range(2)
    ]
    lines = outputs[1].splitlines()
    assert "tgi_request_count 2" in lines
    assert 'tgi_request_failure{err="validation"} 2' in lines
    assert "tgi_request_input_length_count 2" in lines
    with pytest.raises(ValueError, match="multiprocess mode"):
        ServerMetrics(HARNESS_LIMITS, multiprocess_dir=str(tmp_path))


# --- streams and clients -------------------------------------------------------------------


def test_a_disconnect_stops_the_generation_at_once(harness: Harness) -> None:
    harness.runner.step_delay_s = 0.05
    app = harness.app()
    payload = {"inputs": "Hello", "parameters": {"max_new_tokens": 90}}

    async def scenario() -> bytes:
        stream = OpenStream(app, "/generate_stream", payload)
        await stream.wait_for(b'"index":2,')
        # At once, not after 88 more tokens.
        return await stream.finish(disconnect=True, timeout_s=1.0)

    try:
        streamed = asyncio.run(scenario())
        stats = harness.wait_until_idle()
    finally:
        harness.runner.step_delay_s = 0.0
    assert b'"generated_text":"' not in streamed
    assert (stats.batch_size, stats.queue_size, stats.kv_blocks_used) == (0, 0, 0)
    metrics = falcon.testing.TestClient(app).simulate_get("/metrics").text
    assert 'tgi_request_failure{err="dropped"} 1' in metrics.splitlines()


def test_keep_alive_comments_fill_silences() -> None:
    async def slow_events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await asyncio.sleep(0.35)
        yield b"data: 2\n\n"

    async def scenario() -> list[bytes]:
        return [chunk async for chunk in EventStream(slow_events(), None, keep_alive_s=0.1)]

    first, *silence, last = asyncio.run(scenario())
    assert (first, last) == (b"data: 1\n\n", b"data: 2\n\n")
    assert silence and set(silence) == {b":\n\n"}  # one comment per 0.1 s of silence


def test_skip_tokenizer_in_tgi_takes_and_returns_token_ids(harness: Harness) -> None:
    client = falcon.testing.TestClient(harness.app(skip_tokenizer_in_tgi=True))
    parameters = {"max_new_tokens": 3, "details": True}
    result = client.simulate_post("/generate", json={"inputs": "5, 6, 7", "parameters": parameters})
    assert result.json["generated_text"] == "8,9,10"
    assert [t["text"] for t in result.json["details"]["tokens"]] == ["8", "9", "10"]
    tokens = client.simulate_post("/tokenize", json={"inputs": "5, 6"}).json
    assert tokens == [
        {"id": 5, "text": "5", "start": 0, "stop": 1},
        {"id": 6, "text": "6", "start": 3, "stop": 4},
    ]
    refused = client.simulate_post("/generate", json={"inputs": "hello"})
    assert refused.status_code == 422
    assert refused.json["error"].startswith(
        "Input validation error: tokenizer error `inputs` must be"
    )
    # Token ids spell no text to match: grammars are refused up front, as when disabled.
    grammar = {"type": "regex", "value": "[0-9]+"}
    body = {"inputs": "5, 6", "parameters": {"grammar": grammar}}
    unspellable = client.simulate_post("/generate", json=body)
    assert unspellable.status_code == 422
    assert unspellable.json["error"] == "Input validation error: grammar is not supported"


# --- over real sockets, with real clients ----------------------------------------------------


def test_openai_sdk(server: ServedApp) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages = [{"role": "user", "content": "Hi"}]
    completion = client.chat.completions.create(model="tgi", messages=messages, max_tokens=3)
    assert completion.model == "smollm2" and completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    chunks = list(
        client.chat.completions.create(
            model="tgi",
            messages=messages,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) == 4 and chunks[-1].usage is not None and chunks[-1].choices == []
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1])
    assert text == completion.choices[0].message.content
    legacy = client.completions.create(model="tgi", prompt=["Hello", "world"], max_tokens=2)
    assert [choice.index for choice in legacy.choices] == [0, 1]
    assert [model.id for model in client.models.list()] == ["smollm2"]


def test_huggingface_hub_client(server: ServedApp) -> None:
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(base_url=server.url)
    output = client.text_generation("Hello", max_new_tokens=3, details=True)
    assert output.details.generated_tokens == 3 and output.details.finish_reason == "length"
    streamed = list(client.text_generation("Hello", max_new_tokens=3, stream=True, details=True))
    assert [event.index for event in streamed] == [1, 2, 3]
    assert streamed[-1].generated_text == output.generated_text


def test_a_dropped_connection_stops_the_generation(harness: Harness, server: ServedApp) -> None:
    harness.runner.step_delay_s = 0.05
    payload = {"inputs": "Hello", "parameters": {"max_new_tokens": 90}}
    try:
        with httpx.stream(
            "POST", f"{server.url}/generate_stream", json=payload, timeout=30
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            first = next(line for line in response.iter_lines() if line)
        assert json.loads(first.removeprefix("data: "))["index"] == 1
        started = time.monotonic()
        stats = harness.wait_until_idle()
        assert time.monotonic() - started < 1.5  # 89 more tokens would take 4.5 s
    finally:
        harness.runner.step_delay_s = 0.0
    assert (stats.batch_size, stats.kv_blocks_used) == (0, 0)
