"""Service-level API types: ``/info``, ``/v1/models``, ``/tokenize``, ``/chat_tokenize``,
``/vertex``, and the ``{"error", "error_type"}`` body.

The exceptions that produce error bodies live in ``tgi_core.errors``.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from tgi_core.api.chat import ChatRequest
from tgi_core.api.generate import GenerateParameters

__all__ = [
    "ChatTokenizeResponse",
    "ErrorResponse",
    "Info",
    "ModelInfo",
    "ModelsList",
    "SimpleToken",
    "TokenizeResponse",
    "VertexInstance",
    "VertexRequest",
    "VertexResponse",
]


class Info(msgspec.Struct, kw_only=True):
    """``GET /info``: the served model and the router's limits."""

    model_id: str
    model_sha: str | None = None
    model_pipeline_tag: str | None = None
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int
    max_client_batch_size: int
    router: str = "text-generation-router"
    version: str
    sha: str | None = None
    docker_label: str | None = None
    # Ours, after TGI's fields: how the engine runs, once the worker has heard from it.
    # TGI 1.x's dtype and device; the device's kernels and the CPU's features ("compute
    # path"); warmup's wall time in seconds.
    model_dtype: str | None = None
    model_device_type: str | None = None
    compute_path: str | None = None
    warmup_seconds: float | None = None
    # the LoRA adapters a request may name (``adapter_id``, or OpenAI's ``model``)
    lora_adapters: list[str] = []


class ModelInfo(msgspec.Struct, kw_only=True):
    """One entry of ``GET /v1/models`` (``owned_by`` is the model id, ``created`` 0): the
    served model, then each LoRA adapter."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str


class ModelsList(msgspec.Struct, kw_only=True):
    """``GET /v1/models``: ``{"object": "list", "data": [ModelInfo]}``."""

    object: str = "list"
    data: list[ModelInfo]


class SimpleToken(msgspec.Struct, gc=False):
    """A token of ``/tokenize``: ``start``/``stop`` are byte offsets into ``inputs``
    (``text`` empty and offsets 0 when the tokenizer gives no offsets)."""

    id: int
    text: str
    start: int
    stop: int


TokenizeResponse: TypeAlias = list[SimpleToken]
"""``POST /tokenize`` answers a bare JSON array of tokens."""


class ChatTokenizeResponse(msgspec.Struct, kw_only=True):
    """``POST /chat_tokenize``: the tokens of the templated prompt, and that prompt."""

    tokenize_response: list[SimpleToken]
    templated_text: str


class ErrorResponse(msgspec.Struct, kw_only=True):
    """TGI's JSON error body (see ``tgi_core.errors.TGIError.to_body``)."""

    error: str
    error_type: str


class VertexInstance(msgspec.Struct, frozen=True, kw_only=True):
    """A generate instance of ``/vertex``; only ``max_new_tokens`` and ``seed`` are honoured."""

    inputs: str
    parameters: GenerateParameters | None = None


class VertexRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``/vertex``: each instance is a generate instance or a chat request.

    The instance union is untagged (tried in that order), which msgspec cannot decode in
    one pass: use ``tgi_core.api.body.decode_vertex``.
    """

    instances: tuple[VertexInstance | ChatRequest, ...]


class VertexResponse(msgspec.Struct, kw_only=True):
    """Answer of ``/vertex``: one generated text per instance."""

    predictions: list[str]
