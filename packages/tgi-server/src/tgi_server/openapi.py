"""The OpenAPI 3.1 document of the API (``/api-doc/openapi.json``), built from the msgspec types.

Component schemas come from ``msgspec.json.schema_components`` over the request and
response types of ``tgi_core.api``, so the document cannot drift from what the routes
decode and encode. msgspec cannot express TGI's two untagged unions of structs
(``/invocations``' generate | chat | completion body, and a ``/vertex`` instance: generate |
chat), so those two schemas are written here as ``anyOf``. Paths are one table, TGI's route
list.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tgi_core.api import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    ChatTokenizeResponse,
    CompatGenerateRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Info,
    ModelsList,
    SimpleToken,
    StreamResponse,
    VertexInstance,
    VertexResponse,
)

__all__ = ["TAG", "build_openapi"]

TAG = "Text Generation Inference"
_REF = "#/components/schemas/{name}"

_TYPES: tuple[Any, ...] = (
    CompatGenerateRequest,
    GenerateRequest,
    GenerateResponse,
    StreamResponse,
    ChatRequest,
    ChatCompletion,
    ChatCompletionChunk,
    CompletionRequest,
    Completion,
    CompletionChunk,
    Info,
    ModelsList,
    SimpleToken,
    ChatTokenizeResponse,
    VertexInstance,
    VertexResponse,
    ErrorResponse,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _hand_written() -> dict[str, Any]:
    """The untagged unions msgspec cannot describe, and the OpenAI-style stream error."""
    return {
        "SagemakerRequest": {
            "title": "SagemakerRequest",
            "description": "A generate request (``inputs``), else a chat request "
            "(``messages``), else a completion request (``prompt``).",
            "anyOf": [
                _ref("CompatGenerateRequest"),
                _ref("ChatRequest"),
                _ref("CompletionRequest"),
            ],
        },
        "OpenAIStreamError": {
            "title": "OpenAIStreamError",
            "description": "The error event of a chat or completions stream.",
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "message": {"type": "string"},
                        "http_status_code": {"type": "integer"},
                    },
                    "required": ["message", "http_status_code"],
                }
            },
            "required": ["error"],
        },
        "VertexRequest": {
            "title": "VertexRequest",
            "type": "object",
            "properties": {
                "instances": {
                    "type": "array",
                    "items": {"anyOf": [_ref("VertexInstance"), _ref("ChatRequest")]},
                }
            },
            "required": ["instances"],
        },
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[str, Any]:
    descriptions = {
        422: "Input validation error",
        424: "Generation Error",
        429: "Model is overloaded",
        500: "Incomplete generation",
        503: "Text generation inference is down",
    }
    return {
        str(status): {"description": descriptions[status], "content": _json(_ref("ErrorResponse"))}
        for status in statuses
    }


def _body_rejections() -> dict[str, Any]:
    """The body extractor's plain-text answers (axum's, in TGI): a 422 body that does not
    fit the request type is one, beside the routes' own JSON 422s."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "400": {"description": "Malformed JSON body", "content": text},
        "413": {"description": "Payload too large", "content": text},
        "422": {"description": "Input validation error", "content": text},
    }


def _operation(
    operation_id: str,
    summary: str,
    *,
    request: str | None = None,
    ok: dict[str, Any] | None = None,
    errors: tuple[int, ...] = (422, 424, 429, 500),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": [TAG],
        "summary": summary,
        "operationId": operation_id,
        "responses": {"200": {"description": "OK", **({"content": ok} if ok else {})}},
    }
    responses = operation["responses"]
    if request is not None:
        operation["requestBody"] = {"required": True, "content": _json(_ref(request))}
        responses.update(_body_rejections())
    for status, response in _errors(*errors).items():
        if status in responses:  # both: the JSON error and the extractor's text
            responses[status]["content"].update(response["content"])
        else:
            responses[status] = response
    return operation


def _events(*events: str, done: bool = False) -> dict[str, Any]:
    """An SSE stream's content, described per event (as SSE clients and OpenAPI 3.2's
    ``itemSchema`` read it): ``data`` is JSON, one of ``events`` or the error event that ends
    a stream whose request failed (TGI answers those in a 200); with ``done``, the stream
    ends with ``data: [DONE]`` (OpenAI's routes)."""
    payload = {"anyOf": [*map(_ref, events), _ref("ErrorResponse"), _ref("OpenAIStreamError")]}
    data: dict[str, Any] = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": payload,
    }
    if done:
        data = {"anyOf": [{"const": "[DONE]"}, data]}
    event = {"type": "object", "properties": {"data": data}, "required": ["data"]}
    return {"text/event-stream": {"schema": event}}


def _stream_or_json(json_schema: dict[str, Any], *events: str, done: bool) -> dict[str, Any]:
    return {**_json(json_schema), **_events(*events, done=done)}


def _paths() -> dict[str, Any]:
    health = _operation("health", "Health check method", errors=(503,))
    generated = {"type": "array", "items": _ref("GenerateResponse")}  # compat generate's
    generating = {
        "/generate": _operation(
            "generate",
            "Generate tokens",
            request="GenerateRequest",
            ok=_json(_ref("GenerateResponse")),
        ),
        "/generate_stream": _operation(
            "generate_stream",
            "Generate a stream of token using Server-Sent Events",
            request="GenerateRequest",
            ok=_events("StreamResponse"),
        ),
        "/v1/chat/completions": _operation(
            "chat_completions",
            "Generate tokens (OpenAI chat completions)",
            request="ChatRequest",
            ok=_stream_or_json(_ref("ChatCompletion"), "ChatCompletionChunk", done=True),
        ),
        "/v1/completions": _operation(
            "completions",
            "Generate tokens (OpenAI legacy completions)",
            request="CompletionRequest",
            ok=_stream_or_json(_ref("Completion"), "CompletionChunk", done=True),
        ),
        "/vertex": _operation(
            "vertex_compatibility",
            "Generate tokens from a Vertex request",
            request="VertexRequest",
            ok=_json(_ref("VertexResponse")),
        ),
        "/invocations": _operation(
            "sagemaker_compatibility",
            "Generate tokens from a SageMaker request",
            request="SagemakerRequest",
            # the answer of the route the body is for: compat generate, chat or completions
            ok=_stream_or_json(
                {"anyOf": [generated, _ref("ChatCompletion"), _ref("Completion")]},
                "StreamResponse",
                "ChatCompletionChunk",
                "CompletionChunk",
                done=True,
            ),
        ),
    }
    tokens = {"type": "array", "items": _ref("SimpleToken")}
    return {
        "/": {
            "get": health,
            "post": _operation(
                "compat_generate",
                "Generate tokens if `stream == false` or a stream of token if `stream == true`",
                request="CompatGenerateRequest",
                ok=_stream_or_json(generated, "StreamResponse", done=False),
            ),
        },
        **{path: {"post": operation} for path, operation in generating.items()},
        "/tokenize": {
            "post": _operation(
                "tokenize",
                "Tokenize inputs",
                request="GenerateRequest",
                ok=_json(tokens),
                errors=(422,),
            )
        },
        "/chat_tokenize": {
            "post": _operation(
                "get_chat_tokenize",
                "Template and tokenize ChatRequest",
                request="ChatRequest",
                ok=_json(_ref("ChatTokenizeResponse")),
                errors=(422,),
            )
        },
        "/health": {"get": health},
        "/ping": {"get": {**health, "operationId": "ping"}},
        "/info": {
            "get": _operation(
                "get_model_info",
                "Text Generation Inference endpoint info",
                ok=_json(_ref("Info")),
                errors=(),
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics scrape endpoint",
                ok={"text/plain": {"schema": {"type": "string"}}},
                errors=(),
            )
        },
        "/v1/models": {
            "get": _operation(
                "openai_get_model_info", "Get model info", ok=_json(_ref("ModelsList")), errors=()
            )
        },
    }


def build_openapi(version: str) -> dict[str, Any]:
    """The whole document (a JSON-ready dict) for API ``version``."""
    _, components = msgspec.json.schema_components(_TYPES, ref_template=_REF)
    components.update(_hand_written())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Text Generation Inference",
            "description": "Hugging Face Text Generation Inference API",
            "license": {"name": "Apache 2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "version": version,
        },
        "tags": [{"name": TAG, "description": "Hugging Face Text Generation Inference API"}],
        "paths": _paths(),
        "components": {"schemas": dict(sorted(components.items()))},
    }
