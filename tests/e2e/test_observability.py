"""Traces and request log lines of the real launcher: ``--otlp-endpoint`` reaches the Gunicorn
workers, which export over OTLP/HTTP to a collector on 127.0.0.1 (flushed when the service
stops), and each request's TGI line, with its ``x-request-id``, is in the service's log."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tgi_server.otlp_testing import OtlpReceiver
from tgi_server.testing import LaunchedService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


def generate(service: LaunchedService, headers: dict[str, str]) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
    connection.request("POST", "/generate", body, {"content-type": "application/json", **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_the_launchers_workers_export_traces_and_log_each_request(
    launch: Any, receiver: OtlpReceiver
) -> None:
    service = launch(
        "traced", "--otlp-endpoint", receiver.endpoint, "--otlp-service-name", "tgi-e2e"
    )
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    response = generate(service, {"traceparent": traceparent, "x-request-id": "e2e-1"})
    assert (response.status, response.getheader("x-request-id")) == (200, "e2e-1")
    assert service.stop() == 0  # the workers' lifespan shutdown flushes their spans
    spans = receiver.spans()
    assert {service_name for service_name, _ in spans} == {"tgi-e2e"}
    assert {span.name for _, span in spans} == {
        "generate", "validate", "queued", "infer", "prefill", "decode"
    }  # fmt: skip
    [root] = [span for _, span in spans if span.name == "generate"]
    assert (root.trace_id.hex(), root.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    lines = [line for line in service.log().splitlines() if "e2e-1" in line]
    assert len(lines) == 1 and " INFO tgi_server.request_log: generate{" in lines[0], lines
    assert lines[0].endswith("generated_tokens=3}: Success")
