"""``POST /v1/chat/completions``: OpenAI chat completions as TGI serves them.

Tools and the chat template are resolved first; their errors (422 ``tool_error``,
``template_error``) are ordinary JSON errors. Then a ``chat.completion`` object, or a
stream of ``chat.completion.chunk`` events (one per token; special tokens as ``""``; the
last with ``finish_reason``; with ``stream_options.include_usage`` one more chunk with no
choices and the usage) ending with ``data: [DONE]``. Errors once streaming are one
``{"error": {"message", "http_status_code": 422}}`` event, still followed by ``[DONE]``.

With tools in use the answer is read as a tool call (``tgi_server.tool_calls``): a
``tool_calls`` message, or ``tool_calls`` deltas when streaming; when the model chooses
``no_tool`` the request runs again without tools (no grammar, no tool prompt) and that
text is the answer, as in TGI.

Chat templating (``chat_input``, also used by ``/chat_tokenize`` and ``/vertex``) and the
OpenAI helpers shared with ``/v1/completions`` live here too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import falcon
import falcon.asgi
import msgspec

from tgi_core.api import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionComplete,
    ChatCompletionDelta,
    ChatCompletionLogprob,
    ChatCompletionLogprobs,
    ChatCompletionTopLogprob,
    ChatRequest,
    OutputMessage,
    Token,
    Tool,
    Usage,
    decode_body,
    encode_json,
)
from tgi_core.contract import FinishReason
from tgi_core.errors import (
    IncompleteGenerationStreamError,
    TemplateError,
    TGIError,
    openai_stream_error_body,
)
from tgi_core.tokenization import ChatTemplateError, TokenizerLike
from tgi_core.validation import (
    GenerateInput,
    ValidRequest,
    chat_to_generate,
    messages_for_template,
    select_tools,
    tool_prompt,
)
from tgi_server.generation import Generation, Pipeline, StreamStep, generation_headers
from tgi_server.http_errors import count_request
from tgi_server.middleware import request_body
from tgi_server.resources import Served
from tgi_server.streaming import (
    DONE_EVENT,
    cancel_on_disconnect,
    sse_event,
    sse_headers,
    start_stream,
)
from tgi_server.tool_calls import ToolCallStream, next_tool_call_id, parse_tool_call

__all__ = ["ChatCompletions", "chat_input", "openai_finish_reason", "render_chat_prompt", "usage"]


class ChatCompletions:
    """``POST /v1/chat/completions``."""

    def __init__(self, pipeline: Pipeline, served: Served) -> None:
        self._pipeline = pipeline
        self._served = served

    @cancel_on_disconnect
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self.respond(req, resp, decode_body(request_body(req), ChatRequest))

    async def respond(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, request: ChatRequest
    ) -> None:
        """Answer an already decoded request (``/invocations`` comes here too)."""
        pipeline = self._pipeline
        count_request(req, pipeline.metrics)
        started = time.perf_counter()
        generate_input = await chat_input(pipeline, request)
        using_tools = select_tools(request) is not None
        if request.stream:
            events = self._stream_events(request, generate_input, started, using_tools)
            headers = sse_headers(self._served.compute_type, len(generate_input.inputs))
            start_stream(req, resp, events, headers)
            return
        generation = await pipeline.generate_complete(generate_input, started)
        message = OutputMessage(content=generation.text)
        if using_tools:
            call = parse_tool_call(generation.text)
            if call is None:  # no_tool: TGI answers the request again, without tools
                plain_input = await chat_input(pipeline, _without_tools(request))
                generation = await pipeline.generate_complete(plain_input, started)
                message = OutputMessage(content=generation.text)
            else:
                message = OutputMessage(tool_calls=[call])
        choice = ChatCompletionComplete(
            index=0,
            message=message,
            logprobs=_logprobs(generation.tokens, generation.top_tokens)
            if request.logprobs
            else None,
            finish_reason=openai_finish_reason(generation.finish_reason),
        )
        completion = ChatCompletion(
            created=int(time.time()),
            model=self._model(request),
            system_fingerprint=self._served.system_fingerprint,
            choices=[choice],
            usage=usage(generation),
        )
        pipeline.metrics.request_success.inc()
        resp.set_headers(generation_headers(generation, self._served.compute_type))
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_json(completion)

    def _model(self, request: ChatRequest) -> str:
        # Another model name selects a LoRA adapter, and is echoed back.
        model = request.model
        return self._served.model_id if model is None or model == "tgi" else model

    async def _stream_events(
        self,
        request: ChatRequest,
        generate_input: GenerateInput,
        started: float,
        using_tools: bool,
    ) -> AsyncIterator[bytes]:
        metrics = self._pipeline.metrics
        ended = False
        try:
            try:
                with self._pipeline.admit():
                    valid = await self._pipeline.validate(generate_input, stream=True)
                    tools = ToolCallStream(next_tool_call_id(request)) if using_tools else None
                    async for event in self._token_events(request, valid, started, tools):
                        yield event
                    if tools is not None and tools.chose_no_tool:
                        # TGI answers the request again, without tools, on the same stream
                        plain_input = await chat_input(self._pipeline, _without_tools(request))
                        valid = await self._pipeline.validate(plain_input, stream=True)
                        async for event in self._token_events(request, valid, started, None):
                            yield event
                ended = True
                metrics.request_success.inc()
            except TGIError as error:
                ended = True
                metrics.record_failure(error.metric_label)
                yield sse_event(openai_stream_error_body(error))
            yield DONE_EVENT
        finally:
            if not ended:
                metrics.record_failure("dropped")

    async def _token_events(
        self,
        request: ChatRequest,
        valid: ValidRequest,
        started: float,
        tools: ToolCallStream | None,
    ) -> AsyncIterator[bytes]:
        """The chunks of one generation; stops early (aborting it) on ``no_tool``.

        Raises:
            IncompleteGenerationStreamError: the engine stream ended without a last token.
        """
        async with aclosing(self._pipeline.stream(valid, started)) as steps:
            async for step in steps:
                chunk = self._chunk(request, step, tools)
                if tools is not None and tools.chose_no_tool:
                    return
                if chunk is not None:
                    yield sse_event(encode_json(chunk))
                if step.generation is not None:
                    if request.include_usage:
                        yield sse_event(encode_json(self._usage_chunk(request, step.generation)))
                    return
        raise IncompleteGenerationStreamError()

    def _chunk(
        self, request: ChatRequest, step: StreamStep, tools: ToolCallStream | None
    ) -> ChatCompletionChunk | None:
        """The chunk of one token (None while a tool call is buffered, as in TGI)."""
        token = step.token
        generation = step.generation
        if tools is None:
            delta = ChatCompletionDelta(content="" if token.special else token.text)
        else:
            piece = tools.push(token.text, special=token.special)
            if piece is None:
                return None
            delta = piece.delta(tools.call_id)
            # TGI's logprobs show the token's text as sent ("{" for the first piece)
            text = token.text if piece.arguments is None else piece.arguments
            token = Token(token.id, text, token.logprob, token.special)
        choice = ChatCompletionChoice(
            index=0,
            delta=delta,
            logprobs=_logprobs([token], [step.top_tokens]) if request.logprobs else None,
            finish_reason=None
            if generation is None
            else openai_finish_reason(generation.finish_reason),
        )
        return ChatCompletionChunk(
            created=int(time.time()),
            model=self._model(request),
            system_fingerprint=self._served.system_fingerprint,
            choices=[choice],
        )

    def _usage_chunk(self, request: ChatRequest, generation: Generation) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            created=int(time.time()),
            model=self._model(request),
            system_fingerprint=self._served.system_fingerprint,
            choices=[],
            usage=usage(generation),
        )


def openai_finish_reason(reason: FinishReason) -> str:
    """``eos_token`` is ``stop`` on the OpenAI routes; the others keep TGI's name."""
    return "stop" if reason is FinishReason.EOS_TOKEN else reason.value


def usage(generation: Generation) -> Usage:
    prompt_tokens = generation.valid.input_length
    completion_tokens = generation.generated_tokens
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _without_tools(request: ChatRequest) -> ChatRequest:
    return msgspec.structs.replace(request, tools=None, response_format=None)


def _logprobs(tokens: list[Token], top_tokens: list[list[Token]]) -> ChatCompletionLogprobs:
    # TGI zips the tokens with their top tokens, an empty list where there are none
    missing: list[list[Token]] = [[] for _ in range(len(tokens) - len(top_tokens))]
    content = [
        ChatCompletionLogprob(
            token=token.text,
            logprob=token.logprob,
            top_logprobs=[ChatCompletionTopLogprob(top.text, top.logprob) for top in tops],
        )
        for token, tops in zip(tokens, [*top_tokens, *missing], strict=False)
    ]
    return ChatCompletionLogprobs(content=content)


async def chat_input(pipeline: Pipeline, request: ChatRequest) -> GenerateInput:
    """The generate request of a chat: tools selected, template rendered on the pool.

    Raises:
        ToolError, TemplateError: in TGI's order (tools first).
    """
    tools = select_tools(request)
    prompt = await pipeline.workers.run(render_chat_prompt, pipeline.tokenizer, request, tools)
    return chat_to_generate(request, prompt, pipeline.limits.adapter_ids)


def render_chat_prompt(
    tokenizer: TokenizerLike, request: ChatRequest, tools: tuple[Tool, ...] | None
) -> str:
    """The templated prompt of a chat, tools placed as TGI places them.

    With tools, ``\\n---\\n<tools JSON>\\n<tool prompt>`` is appended to the last message when
    the template does not render ``tools`` itself; when it does, only ``\\n---\\n<tool
    prompt>`` is appended and the tools go to the template.

    Raises:
        TemplateError: no template, or it failed to render.
    """
    messages: list[dict[str, Any]] = list(messages_for_template(request))
    template_tools: list[dict[str, Any]] | None = None
    if tools is not None and messages:
        tool_dicts = [_tool_dict(tool) for tool in tools]
        template = tokenizer.chat_template
        if template is not None and template.uses_tools:
            template_tools = tool_dicts
            suffix = f"\n---\n{tool_prompt(request)}"
        else:
            suffix = f"\n---\n{encode_json(tool_dicts).decode()}\n{tool_prompt(request)}"
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + suffix}
    try:
        return tokenizer.apply_chat_template(messages, tools=template_tools)
    except ChatTemplateError as exc:
        raise TemplateError(exc.message) from exc


def _tool_dict(tool: Tool) -> dict[str, Any]:
    # serde's order and names for TGI's Tool: arguments (alias parameters) is the schema
    function = tool.function
    return {
        "type": tool.type,
        "function": {
            "description": function.description,
            "name": function.name,
            "arguments": function.schema,
        },
    }
