"""``POST /tokenize`` (a generate request's ``inputs``) and ``POST /chat_tokenize``.

``/tokenize`` answers ``[{id, text, start, stop}]`` (byte offsets into ``inputs``; special
tokens added; ``parameters.truncate`` keeps the last tokens); ``/chat_tokenize`` templates
a chat request as ``/v1/chat/completions`` would and answers its tokens (no special tokens
added: the template placed them) with the templated text. Tokenizing runs on the
validation pool.
"""

from __future__ import annotations

import falcon
import falcon.asgi

from tgi_core.api import (
    ChatRequest,
    ChatTokenizeResponse,
    GenerateRequest,
    SimpleToken,
    decode_body,
    encode_json,
)
from tgi_core.errors import ValidationError
from tgi_core.tokenization import TokenizerLike
from tgi_server.generation import Pipeline
from tgi_server.http_errors import count_request
from tgi_server.middleware import request_body
from tgi_server.resources.chat import chat_input

__all__ = ["ChatTokenize", "Tokenize", "tokenize_text"]


def tokenize_text(
    tokenizer: TokenizerLike,
    text: str,
    *,
    add_special_tokens: bool,
    truncate: int | None = None,
) -> list[SimpleToken]:
    """The tokens of ``text`` with their byte offsets (the last ``truncate`` of them).

    Raises:
        ValidationError: the tokenizer refused the text (TGI's "tokenizer error ...").
    """
    try:
        offsets = tokenizer.encode_with_offsets(text, add_special_tokens=add_special_tokens)
    except Exception as exc:  # any tokenizer failure is the client's input, as in TGI
        raise ValidationError(f"tokenizer error {exc}") from exc
    if truncate is not None and 0 < truncate < len(offsets):
        offsets = offsets[len(offsets) - truncate :]
    return [SimpleToken(token_id, piece, start, stop) for token_id, piece, start, stop in offsets]


class Tokenize:
    """``POST /tokenize``."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = decode_body(request_body(req), GenerateRequest)
        tokens = await self._pipeline.workers.run(
            tokenize_text,
            self._pipeline.tokenizer,
            request.inputs,
            add_special_tokens=request.add_special_tokens,
            truncate=request.parameters.truncate,
        )
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_json(tokens)


class ChatTokenize:
    """``POST /chat_tokenize`` (counted in ``tgi_request_count``, as in TGI)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = decode_body(request_body(req), ChatRequest)
        count_request(req, self._pipeline.metrics)
        generate_input = await chat_input(self._pipeline, request)
        tokens = await self._pipeline.workers.run(
            tokenize_text,
            self._pipeline.tokenizer,
            generate_input.inputs,
            add_special_tokens=generate_input.add_special_tokens,
        )
        response = ChatTokenizeResponse(
            tokenize_response=tokens, templated_text=generate_input.inputs
        )
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_json(response)
