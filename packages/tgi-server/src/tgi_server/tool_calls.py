"""Tool calls read back from a chat answer, as TGI's router reads them (``chat.rs``).

With tools in use the model's text is constrained to ``{"function": {"_name": <tool>,
<arguments>...}}`` (``tgi_core.validation.chat.tool_grammar``). Here:

- ``parse_tool_call``: a whole answer -> the ``OutputToolCall`` of a non-stream answer
  (``id`` ``"0"``, ``description`` null, ``arguments`` the JSON text of the arguments without
  ``_name``), or None when the model chose ``no_tool`` (the route then runs the request
  again without tools and answers in text);
- ``ToolCallStream``: TGI's ``ChatState`` for streams: tokens are buffered until the function
  name can be parsed, then the first delta carries the name and ``"{"``, the next ones the
  token texts as ``arguments`` pieces; the piece that completes the JSON loses the wrapper's
  closing ``}``; after it nothing more is sent (not even the final token, as in TGI).
  ``no_tool`` is reported before anything was sent;
- ``next_tool_call_id``: the id of a streamed call (the largest integer id among the
  conversation's tool calls + 1, ``"0"`` without any, a UUID when an id is not an integer).

The chunks themselves (model, fingerprint, logprobs) are built by ``resources.chat``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, NamedTuple

from tgi_core.api import (
    ChatCompletionDelta,
    ChatRequest,
    DeltaFunction,
    DeltaToolCall,
    OutputFunction,
    OutputToolCall,
    encode_json,
)
from tgi_core.errors import ToolError

__all__ = [
    "NO_TOOL_NAME",
    "ToolCallStream",
    "ToolPiece",
    "next_tool_call_id",
    "parse_tool_call",
]

NO_TOOL_NAME = "no_tool"


class _CallError(ValueError):
    """The text is JSON but not a ``{"function": {"_name": str, ...}}`` call (serde's words)."""


def parse_tool_call(text: str) -> OutputToolCall | None:
    """The tool call of a whole answer; None when the model chose ``no_tool``.

    Raises:
        ToolError: "Failed to parse generated text: <why> <text>" (an answer cut short by
            ``max_tokens``, say), TGI's message.
    """
    try:
        function = _call(text)
    except ValueError as exc:
        msg = f"Failed to parse generated text: {exc} {json.dumps(text, ensure_ascii=False)}"
        raise ToolError(msg) from exc
    name = function.pop("_name")
    if name == NO_TOOL_NAME:
        return None
    arguments = encode_json(function).decode()
    return OutputToolCall(id="0", function=OutputFunction(name=name, arguments=arguments))


def next_tool_call_id(request: ChatRequest) -> str:
    """The id of the tool call a streamed answer makes (TGI's ``next_tool_call_id``)."""
    next_id = 0
    for message in request.messages:
        for call in message.tool_calls or ():
            if not (call.id.isascii() and call.id.isdigit()):
                return str(uuid.uuid4())
            next_id = max(next_id, int(call.id) + 1)
    return str(next_id)


class ToolPiece(NamedTuple):
    """What one streamed token becomes: the function ``name`` (first piece only) and an
    ``arguments`` piece, or ``arguments`` None for a special token (an empty text delta)."""

    name: str | None
    arguments: str | None

    def delta(self, call_id: str) -> ChatCompletionDelta:
        if self.arguments is None:
            return ChatCompletionDelta(content="")
        function = DeltaFunction(name=self.name, arguments=self.arguments)
        return ChatCompletionDelta(
            tool_calls=[DeltaToolCall(index=0, id=call_id, function=function)]
        )


class ToolCallStream:
    """TGI's streaming state machine for tool calls, one token at a time.

    ``push`` returns the piece to send, or None while buffering. ``chose_no_tool`` turns
    true when the model's function is ``no_tool``; the stream must stop there.
    """

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.chose_no_tool = False
        self._text = ""
        self._buffering = True

    def push(self, text: str, *, special: bool) -> ToolPiece | None:
        self._text += text
        if self._buffering:
            return self._name_piece()
        arguments = None if special else text
        if _is_call(self._text):
            # The call is complete: what is left of this token, less the wrapper's "}".
            self._buffering = True
            arguments = text.rstrip().removesuffix("}")
        return ToolPiece(None, arguments)

    def _name_piece(self) -> ToolPiece | None:
        # Close the partial JSON as if the function object ended here.
        partial = self._text
        while partial and (partial[-1].isspace() or partial[-1] in ",}"):
            partial = partial[:-1]
        try:
            name = _call(partial + "}}")["_name"]
        except ValueError:
            return None
        if name == NO_TOOL_NAME:
            self.chose_no_tool = True
            return None
        self._buffering = False
        return ToolPiece(name, "{")


def _is_call(text: str) -> bool:
    try:
        _call(text)
    except ValueError:
        return False
    return True


def _call(text: str) -> dict[str, Any]:
    """The ``function`` object of ``{"function": {"_name": str, ...}}`` (other keys ignored).

    Raises:
        ValueError: not JSON (``json``'s message) or not that shape.
    """
    value = json.loads(text, parse_constant=_no_constant)
    if not isinstance(value, dict):
        raise _CallError("invalid type: expected struct Call")
    if "function" not in value:
        raise _CallError("missing field `function`")
    function = value["function"]
    if not isinstance(function, dict):
        raise _CallError("invalid type: expected struct ToolCall")
    if "_name" not in function:
        raise _CallError("missing field `_name`")
    if not isinstance(function["_name"], str):
        raise _CallError("invalid type for `_name`: expected a string")
    return function


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (Python's json accepts them, serde does not).
    raise ValueError(f"expected value, found {name}")
