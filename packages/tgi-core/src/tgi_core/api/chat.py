"""OpenAI chat completions as TGI serves them: ``/v1/chat/completions``, ``/chat_tokenize``.

Requests: ``ChatRequest`` with its messages (text or content chunks, assistant tool calls),
tools and ``tool_choice``, ``response_format`` and ``stream_options``. Responses:
``ChatCompletion`` (non-stream) and ``ChatCompletionChunk`` (one SSE event), with
``object`` as their first key, as TGI's serde tag puts it.

serde aliases and untagged enums have no msgspec equivalent, so they are spelled out:
``max_completion_tokens`` is a second field read through ``ChatRequest.max_new_tokens``;
a message body is ``content`` or ``tool_calls``, checked in ``__post_init__`` (a decode
error, so a 422); output messages and deltas are single structs whose absent keys are
``UNSET`` (never encoded). The mapping to a generate request lives in
``tgi_core.validation.chat``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from tgi_core.api.common import U32, U64, Usage, check_u64, f32
from tgi_core.api.generate import GrammarType

__all__ = [
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionComplete",
    "ChatCompletionDelta",
    "ChatCompletionLogprob",
    "ChatCompletionLogprobs",
    "ChatCompletionTopLogprob",
    "ChatRequest",
    "DeltaFunction",
    "DeltaToolCall",
    "FunctionDefinition",
    "FunctionName",
    "ImageUrl",
    "ImageUrlChunk",
    "Message",
    "MessageChunk",
    "OutputFunction",
    "OutputMessage",
    "OutputToolCall",
    "StreamOptions",
    "TextChunk",
    "Tool",
    "ToolCall",
    "ToolChoiceFunction",
]


class TextChunk(msgspec.Struct, frozen=True, tag_field="type", tag="text"):
    """A ``{"type": "text", "text": ...}`` content chunk."""

    text: str


class ImageUrl(msgspec.Struct, frozen=True):
    """``{"url": ...}``: an ``http(s)://`` address or a ``data:<mime>;base64,`` URI."""

    url: str


class ImageUrlChunk(msgspec.Struct, frozen=True, tag_field="type", tag="image_url"):
    """A ``{"type": "image_url", "image_url": {"url": ...}}`` content chunk."""

    image_url: ImageUrl


MessageChunk = TextChunk | ImageUrlChunk


class FunctionDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """A function: in a tool definition (``parameters``) or an assistant tool call (``arguments``).

    TGI reads ``parameters`` as an alias of ``arguments``; giving both is a duplicate field.
    """

    name: str
    description: str | None = None
    arguments: Any = None
    parameters: Any = None

    def __post_init__(self) -> None:
        if self.arguments is not None and self.parameters is not None:
            msg = "duplicate field `arguments` (alias `parameters`)"
            raise ValueError(msg)

    @property
    def schema(self) -> Any:
        """The function's arguments or parameters, whichever was given (``None`` if neither)."""
        return self.arguments if self.arguments is not None else self.parameters


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    """A tool the model may call: ``{"type": "function", "function": {...}}``."""

    type: str
    function: FunctionDefinition


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call in an assistant message of the conversation history."""

    id: str
    type: str
    function: FunctionDefinition


class FunctionName(msgspec.Struct, frozen=True):
    """``{"name": ...}``: the function a ``tool_choice`` object names."""

    name: str


class ToolChoiceFunction(msgspec.Struct, frozen=True, tag_field="type", tag="function"):
    """``tool_choice`` as ``{"type": "function", "function": {"name": ...}}``."""

    function: FunctionName


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation message: ``role`` plus ``content`` or ``tool_calls``.

    ``content`` is a string or a list of text/image chunks. When both are given,
    ``content`` wins (TGI tries the content variant first).
    """

    role: str
    content: str | tuple[MessageChunk, ...] | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.content is None and self.tool_calls is None:
            msg = "data did not match any variant of untagged enum MessageBody"
            raise ValueError(msg)


class StreamOptions(msgspec.Struct, frozen=True):
    """``stream_options``: ``include_usage`` adds a final chunk with ``usage``."""

    include_usage: bool = False


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``/v1/chat/completions`` and ``/chat_tokenize``.

    ``model`` other than ``"tgi"`` selects a LoRA adapter. ``logit_bias`` and ``n`` are
    accepted and ignored. ``temperature`` exactly 0 means greedy; anything else (absent
    included) samples. ``presence_penalty`` becomes ``repetition_penalty =
    presence_penalty + 2.0``; ``top_logprobs`` becomes ``top_n_tokens``.
    """

    model: str | None = None
    messages: tuple[Message, ...]
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | list[float] | None = None
    logprobs: bool | None = None
    top_logprobs: U32 | None = None
    max_tokens: U32 | None = None
    max_completion_tokens: U32 | None = None
    n: U32 | None = None
    presence_penalty: float | None = None
    stop: str | tuple[str, ...] | None = None
    stream: bool = False
    seed: U64 | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: tuple[Tool, ...] | None = None
    tool_prompt: str | None = None
    tool_choice: str | ToolChoiceFunction | None = None
    response_format: GrammarType | None = None
    stream_options: StreamOptions | None = None

    def __post_init__(self) -> None:
        check_u64("seed", self.seed)
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            msg = "duplicate field `max_tokens` (alias `max_completion_tokens`)"
            raise ValueError(msg)

    @property
    def max_new_tokens(self) -> int | None:
        """``max_tokens`` or its alias ``max_completion_tokens``."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        """``stop`` as a tuple (a single string is one stop sequence)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else self.stop

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


# --- responses -------------------------------------------------------------------------


class ChatCompletionTopLogprob(msgspec.Struct, gc=False):
    """A candidate token at one position, with its logprob."""

    token: str
    logprob: float

    def __post_init__(self) -> None:
        self.logprob = f32(self.logprob)


class ChatCompletionLogprob(msgspec.Struct):
    """The chosen token at one position, its logprob and the top candidates."""

    token: str
    logprob: float
    top_logprobs: list[ChatCompletionTopLogprob]

    def __post_init__(self) -> None:
        self.logprob = f32(self.logprob)


class ChatCompletionLogprobs(msgspec.Struct):
    """``logprobs`` of a choice (present when the request set ``logprobs``)."""

    content: list[ChatCompletionLogprob]


class OutputFunction(msgspec.Struct, kw_only=True):
    """The function of a returned tool call; ``arguments`` is a JSON string."""

    description: str | None = None
    name: str
    arguments: str


class OutputToolCall(msgspec.Struct, kw_only=True):
    """A tool call the model made (``id`` is ``"0"``, ``"1"``, ... per conversation)."""

    id: str
    type: str = "function"
    function: OutputFunction


class _AssistantTurn(msgspec.Struct, kw_only=True):
    """The keys an answer's message and a chunk's delta share; ``tool_calls`` follows them."""

    role: str = "assistant"
    content: str | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET


class OutputMessage(_AssistantTurn, kw_only=True):
    """The assistant message of a non-stream choice: ``content`` or ``tool_calls``."""

    tool_calls: list[OutputToolCall] | UnsetType = UNSET


class ChatCompletionComplete(msgspec.Struct, kw_only=True):
    """A non-stream choice; ``finish_reason`` is ``stop``, ``length`` or ``stop_sequence``."""

    index: int
    message: OutputMessage
    logprobs: ChatCompletionLogprobs | None
    finish_reason: str


class ChatCompletion(msgspec.Struct, kw_only=True, tag_field="object", tag="chat.completion"):
    """Answer of a non-stream chat request (``id`` is always empty in TGI)."""

    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionComplete]
    usage: Usage


class DeltaFunction(msgspec.Struct, kw_only=True):
    """A piece of a streamed tool call: the name (first chunk) or an ``arguments`` fragment."""

    name: str | None
    arguments: str


class DeltaToolCall(msgspec.Struct, kw_only=True):
    """A streamed tool call fragment."""

    index: int
    id: str
    type: str = "function"
    function: DeltaFunction


class ChatCompletionDelta(_AssistantTurn, kw_only=True):
    """The ``delta`` of a chunk: ``content`` (text) or ``tool_calls`` (tool streaming)."""

    tool_calls: list[DeltaToolCall] | UnsetType = UNSET


class ChatCompletionChoice(msgspec.Struct, kw_only=True):
    """A stream choice; ``finish_reason`` is ``null`` until the final token."""

    index: int
    delta: ChatCompletionDelta
    logprobs: ChatCompletionLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(
    msgspec.Struct, kw_only=True, tag_field="object", tag="chat.completion.chunk"
):
    """One chat SSE event. ``usage`` is ``null`` except on the ``include_usage`` chunk,
    whose ``choices`` is empty."""

    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None
