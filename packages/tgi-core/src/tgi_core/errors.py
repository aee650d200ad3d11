"""TGI's domain errors: one exception per row of TGI's error table, mapped to status codes.

Every error answers the JSON body ``{"error": <message>, "error_type": <type>}`` with its
HTTP ``status``; ``message`` is the full text, prefix included (``Input validation error:
...``). On the OpenAI stream routes an error raised after the stream started is one SSE
event with ``openai_stream_error_body`` (always ``http_status_code`` 422, as TGI does).
``metric_label`` is the ``err`` label of ``tgi_request_failure`` (None: not counted).

Malformed request bodies are not here: the JSON extractor rejects them with plain text
(``tgi_core.api.body.BodyError``).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = [
    "BatchSizeExceededError",
    "GenerationError",
    "IncompleteGenerationError",
    "IncompleteGenerationStreamError",
    "MissingTemplateVariableError",
    "OverloadedError",
    "StreamSerializationError",
    "SuffixNotSupportedError",
    "TGIError",
    "TemplateError",
    "ToolError",
    "UnhealthyError",
    "ValidationError",
    "VertexEmptyInstancesError",
    "VertexInstanceError",
    "openai_stream_error_body",
]


class _ErrorBody(msgspec.Struct):
    error: str
    error_type: str


class _ApiError(msgspec.Struct):
    message: str
    http_status_code: int


class _OpenAIErrorEvent(msgspec.Struct):
    error: _ApiError


_ENCODER = msgspec.json.Encoder()


class TGIError(Exception):
    """Base of every error with a TGI status code and ``{"error", "error_type"}`` body.

    Subclasses set ``status``, ``error_type`` and ``prefix``; ``message`` is ``prefix``
    followed by the detail given to the constructor.
    """

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal"
    prefix: ClassVar[str] = ""
    metric_label: ClassVar[str | None] = None

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        self.message = self.prefix + detail
        super().__init__(self.message)

    def to_body(self) -> dict[str, str]:
        """The JSON body as a dict: ``{"error": message, "error_type": error_type}``."""
        return {"error": self.message, "error_type": self.error_type}

    def to_json(self) -> bytes:
        """The JSON body, compact, as TGI writes it (also the data of an SSE error event)."""
        return _ENCODER.encode(_ErrorBody(self.message, self.error_type))


class ValidationError(TGIError):
    """A request that breaks a validation rule (422 ``validation``)."""

    status = 422
    error_type = "validation"
    prefix = "Input validation error: "
    metric_label = "validation"


class GenerationError(TGIError):
    """The engine failed while generating (424); the detail is like ``Server error: ...``."""

    status = 424
    error_type = "generation"
    prefix = "Request failed during generation: "
    metric_label = "generation"


class OverloadedError(TGIError):
    """No concurrency permit left (429 ``overloaded``, "Model is overloaded")."""

    status = 429
    error_type = "overloaded"
    prefix = "Model is overloaded"
    metric_label = "overloaded"

    def __init__(self) -> None:
        super().__init__()


class IncompleteGenerationError(TGIError):
    """A non-stream generation ended without its final token (500)."""

    status = 500
    error_type = "incomplete_generation"
    prefix = "Incomplete generation"
    metric_label = "incomplete"

    def __init__(self) -> None:
        super().__init__()


class IncompleteGenerationStreamError(TGIError):
    """A stream ended without its final token (an SSE error event; 500 otherwise)."""

    status = 500
    error_type = "incomplete_generation_stream"
    prefix = "Incomplete generation stream"
    metric_label = "incomplete"

    def __init__(self) -> None:
        super().__init__()


class TemplateError(TGIError):
    """The chat template failed to render, or the model has none (422 ``template_error``)."""

    status = 422
    error_type = "template_error"
    prefix = "Template error: "
    metric_label = "template"


class MissingTemplateVariableError(TGIError):
    """The chat template uses an undefined variable (422; TGI's message has the typo)."""

    status = 422
    error_type = "missing_template_variable"
    prefix = "Missing template vatiable: "  # sic: TGI's text, clients may match on it
    metric_label = "template"


class ToolError(TGIError):
    """Tools that cannot be used as asked (422 ``tool_error``)."""

    status = 422
    error_type = "tool_error"
    prefix = "Tool error: "


class StreamSerializationError(TGIError):
    """A stream event could not be serialized (500)."""

    status = 500
    error_type = "stream_serialization_error"
    prefix = "Stream event serialization error"

    def __init__(self) -> None:
        super().__init__()


class UnhealthyError(TGIError):
    """``/health`` when the engine is not healthy (503 ``healthcheck``, "unhealthy")."""

    status = 503
    error_type = "healthcheck"
    prefix = "unhealthy"

    def __init__(self) -> None:
        super().__init__()


class SuffixNotSupportedError(TGIError):
    """``/v1/completions`` with a ``suffix`` (422)."""

    status = 422
    error_type = "suffix not supported"
    prefix = "Suffix is not supported and can be achieved by preprocessing the prompt."
    metric_label = "validation"

    def __init__(self) -> None:
        super().__init__()


class BatchSizeExceededError(TGIError):
    """``/v1/completions`` with more prompts than ``--max-client-batch-size`` (422)."""

    status = 422
    error_type = "batch size exceeded"
    prefix = "Number of prompts exceeds the maximum allowed batch size of "
    metric_label = "validation"

    def __init__(self, max_client_batch_size: int) -> None:
        super().__init__(str(max_client_batch_size))


class VertexEmptyInstancesError(TGIError):
    """``/vertex`` with an empty ``instances`` list (422, type and message alike)."""

    status = 422
    error_type = "Input validation error"
    prefix = "Input validation error"
    metric_label = "validation"

    def __init__(self) -> None:
        super().__init__()


class VertexInstanceError(TGIError):
    """A ``/vertex`` instance failed (500, type and message "Incomplete generation")."""

    status = 500
    error_type = "Incomplete generation"
    prefix = "Incomplete generation"

    def __init__(self) -> None:
        super().__init__()


def openai_stream_error_body(error: TGIError | str) -> bytes:
    """The SSE data of an error inside an OpenAI stream (chat or completions).

    ``{"error":{"message":<message>,"http_status_code":422}}``: TGI always reports 422
    here, whatever the cause.
    """
    message = error if isinstance(error, str) else error.message
    return _ENCODER.encode(_OpenAIErrorEvent(_ApiError(message, 422)))
