"""TGI's HTTP API as msgspec types: requests, responses, SSE event bodies, body decoding.

- ``generate``: the native API (GenerateRequest, GenerateResponse, StreamResponse, ...)
- ``chat``: OpenAI chat completions (ChatRequest, ChatCompletion, ChatCompletionChunk, ...)
- ``completions``: OpenAI legacy completions (CompletionRequest, Completion, ...)
- ``info``: /info, /v1/models, /tokenize, /chat_tokenize, /vertex, ErrorResponse
- ``body``: ``decode_body`` and the untagged-union decoders, raising ``BodyError``
- ``common``: ``encode_json`` (compact, serde-compatible) and integer/f32 helpers

Validation and the mapping of OpenAI requests to generate requests live in
``tgi_core.validation``; error bodies in ``tgi_core.errors``.
"""

from __future__ import annotations

from tgi_core.api.body import (
    UNSUPPORTED_MEDIA_TYPE_MESSAGE,
    BodyError,
    SagemakerRequest,
    decode_body,
    decode_invocations,
    decode_vertex,
)
from tgi_core.api.chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionComplete,
    ChatCompletionDelta,
    ChatCompletionLogprob,
    ChatCompletionLogprobs,
    ChatCompletionTopLogprob,
    ChatRequest,
    DeltaFunction,
    DeltaToolCall,
    FunctionDefinition,
    FunctionName,
    ImageUrl,
    ImageUrlChunk,
    Message,
    MessageChunk,
    OutputFunction,
    OutputMessage,
    OutputToolCall,
    StreamOptions,
    TextChunk,
    Tool,
    ToolCall,
    ToolChoiceFunction,
)
from tgi_core.api.common import Usage, encode_json, f32
from tgi_core.api.completions import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
)
from tgi_core.api.generate import (
    BestOfSequence,
    CompatGenerateRequest,
    Details,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    GrammarType,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
)
from tgi_core.api.info import (
    ChatTokenizeResponse,
    ErrorResponse,
    Info,
    ModelInfo,
    ModelsList,
    SimpleToken,
    TokenizeResponse,
    VertexInstance,
    VertexRequest,
    VertexResponse,
)

__all__ = [
    "UNSUPPORTED_MEDIA_TYPE_MESSAGE",
    "BestOfSequence",
    "BodyError",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionComplete",
    "ChatCompletionDelta",
    "ChatCompletionLogprob",
    "ChatCompletionLogprobs",
    "ChatCompletionTopLogprob",
    "ChatRequest",
    "ChatTokenizeResponse",
    "CompatGenerateRequest",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionRequest",
    "DeltaFunction",
    "DeltaToolCall",
    "Details",
    "ErrorResponse",
    "FunctionDefinition",
    "FunctionName",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "GrammarType",
    "ImageUrl",
    "ImageUrlChunk",
    "Info",
    "Message",
    "MessageChunk",
    "ModelInfo",
    "ModelsList",
    "OutputFunction",
    "OutputMessage",
    "OutputToolCall",
    "PrefillToken",
    "SagemakerRequest",
    "SimpleToken",
    "StreamDetails",
    "StreamOptions",
    "StreamResponse",
    "TextChunk",
    "Token",
    "TokenizeResponse",
    "Tool",
    "ToolCall",
    "ToolChoiceFunction",
    "Usage",
    "VertexInstance",
    "VertexRequest",
    "VertexResponse",
    "decode_body",
    "decode_invocations",
    "decode_vertex",
    "encode_json",
    "f32",
]
