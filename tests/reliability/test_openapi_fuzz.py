"""schemathesis against our own OpenAPI document, served by the real launcher.

Every operation of ``/api-doc/openapi.json`` gets ``MAX_EXAMPLES`` requests (the cheap ones
``CHEAP_EXAMPLES``; the GETs without parameters the few there are) drawn by
hypothesis from its schema (schemathesis' positive cases: valid by the document). No answer
may be a 5xx, but for TGI's 500 of a failed ``/vertex`` instance, and each must match the
document: a status it lists, its content type, its schema (every SSE event too). The model
is real, so a drawn body's generation length is capped at ``MAX_TOKENS`` before it is
sent; everything else is as hypothesis drew it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tgi_server.openapi import build_openapi
from tgi_server.testing import LaunchedService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_EXAMPLES = 40  # per generating operation (up to a second each on 2 cores)
CHEAP_EXAMPLES = {"/tokenize": 1000, "/chat_tokenize": 1000}  # a few ms each
MAX_TOKENS = 2
REQUEST_TIMEOUT_S = 60
# The 5xx check is ours: a failed /vertex instance is TGI's documented 500 (reference a.2).
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
INCOMPLETE = {"error": "Incomplete generation", "error_type": "Incomplete generation"}
CALLS: Counter[str] = Counter()  # by operation, for the report


@pytest.fixture(scope="module")
def fuzzed(launch: Any, stop_and_check: Any) -> Iterator[LaunchedService]:
    service = launch(
        "fuzz", "--workers", "2", "--max-concurrent-requests", "16",
        environ={"WARMUP_ENABLED": "false"},
    )  # fmt: skip
    yield service
    print(f"\nfuzz: {CALLS.total()} calls: {dict(CALLS)}")
    stop_and_check(service)


@pytest.fixture(scope="module")
def api_schema(fuzzed: LaunchedService) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/api-doc/openapi.json", timeout=30)
    schema.config.generation.update(
        modes=[schemathesis.GenerationMode.POSITIVE], max_examples=MAX_EXAMPLES
    )
    return schema


def cap_generation(body: Any) -> None:
    """At most ``MAX_TOKENS`` new tokens, wherever a body (or a Vertex instance) asks."""
    if not isinstance(body, dict):
        return
    for instance in body.get("instances") or ():
        cap_generation(instance)
    if "inputs" in body:  # generate, and SageMaker's generate
        parameters = body.get("parameters")
        if not isinstance(parameters, dict):
            parameters = body["parameters"] = {}
        parameters["max_new_tokens"] = min(
            parameters.get("max_new_tokens") or MAX_TOKENS, MAX_TOKENS
        )
    elif "messages" in body or "prompt" in body:  # chat (either name, not both) and completions
        name = (
            "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
        )
        body[name] = min(body.get(name) or MAX_TOKENS, MAX_TOKENS)


# Each operation of the document (built here without a server) is a test of its own.
OPERATIONS = [
    (path, method.upper())
    for path, methods in build_openapi("0").get("paths", {}).items()
    for method in methods
]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_answer_is_in_the_document(
    api_schema: schemathesis.BaseSchema, path: str, method: str
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=CHEAP_EXAMPLES.get(path, MAX_EXAMPLES),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_within_the_document(case: schemathesis.Case) -> None:
        cap_generation(case.body)
        CALLS[f"{method} {path}"] += 1
        response = case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
        if response.status_code >= 500:
            assert (path, response.status_code, response.json()) == ("/vertex", 500, INCOMPLETE)

    answers_within_the_document()
