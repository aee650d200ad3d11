"""TGI's error table: status codes, error types, messages and bodies."""

from __future__ import annotations

import pytest

from tgi_core.errors import (
    BatchSizeExceededError,
    GenerationError,
    IncompleteGenerationError,
    IncompleteGenerationStreamError,
    MissingTemplateVariableError,
    OverloadedError,
    StreamSerializationError,
    SuffixNotSupportedError,
    TemplateError,
    TGIError,
    ToolError,
    UnhealthyError,
    ValidationError,
    VertexEmptyInstancesError,
    VertexInstanceError,
    openai_stream_error_body,
)

TABLE: list[tuple[TGIError, int, str, str, str | None]] = [
    (
        GenerationError("Server error: boom"),
        424,
        "generation",
        "Request failed during generation: Server error: boom",
        "generation",
    ),
    (OverloadedError(), 429, "overloaded", "Model is overloaded", "overloaded"),
    (
        ValidationError("`inputs` cannot be empty"),
        422,
        "validation",
        "Input validation error: `inputs` cannot be empty",
        "validation",
    ),
    (
        IncompleteGenerationError(),
        500,
        "incomplete_generation",
        "Incomplete generation",
        "incomplete",
    ),
    (
        IncompleteGenerationStreamError(),
        500,
        "incomplete_generation_stream",
        "Incomplete generation stream",
        "incomplete",
    ),
    (
        TemplateError("no chat template"),
        422,
        "template_error",
        "Template error: no chat template",
        "template",
    ),
    (
        MissingTemplateVariableError("name"),
        422,
        "missing_template_variable",
        "Missing template vatiable: name",
        "template",
    ),
    (ToolError("x"), 422, "tool_error", "Tool error: x", None),
    (
        StreamSerializationError(),
        500,
        "stream_serialization_error",
        "Stream event serialization error",
        None,
    ),
    (UnhealthyError(), 503, "healthcheck", "unhealthy", None),
    (
        SuffixNotSupportedError(),
        422,
        "suffix not supported",
        "Suffix is not supported and can be achieved by preprocessing the prompt.",
        "validation",
    ),
    (
        BatchSizeExceededError(4),
        422,
        "batch size exceeded",
        "Number of prompts exceeds the maximum allowed batch size of 4",
        "validation",
    ),
    (
        VertexEmptyInstancesError(),
        422,
        "Input validation error",
        "Input validation error",
        "validation",
    ),
    (VertexInstanceError(), 500, "Incomplete generation", "Incomplete generation", None),
]


@pytest.mark.parametrize(("error", "status", "error_type", "message", "label"), TABLE)
def test_error_table(
    error: TGIError, status: int, error_type: str, message: str, label: str | None
) -> None:
    assert isinstance(error, TGIError)
    assert error.status == status
    assert error.error_type == error_type
    assert error.message == message
    assert str(error) == message
    assert error.metric_label == label
    assert error.to_body() == {"error": message, "error_type": error_type}


def test_json_body_is_compact_and_ordered() -> None:
    error = ValidationError(
        "`inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 200 `max_new_tokens`"
    )
    assert error.to_json() == (
        b'{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096.'
        b' Given: 4000 `inputs` tokens and 200 `max_new_tokens`","error_type":"validation"}'
    )
    assert ToolError("Grammar and tools are mutually exclusive").to_json() == (
        b'{"error":"Tool error: Grammar and tools are mutually exclusive",'
        b'"error_type":"tool_error"}'
    )


def test_errors_can_be_raised_and_caught_as_the_base() -> None:
    with pytest.raises(TGIError) as info:
        raise OverloadedError()
    assert info.value.status == 429


def test_openai_stream_error_body_is_always_422() -> None:
    assert openai_stream_error_body(GenerationError("Server error: x")) == (
        b'{"error":{"message":"Request failed during generation: Server error: x",'
        b'"http_status_code":422}}'
    )
    assert openai_stream_error_body("plain") == (
        b'{"error":{"message":"plain","http_status_code":422}}'
    )
