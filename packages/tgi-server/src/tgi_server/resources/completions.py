"""``POST /v1/completions``: OpenAI legacy completions as TGI serves them.

A ``suffix`` or more prompts than ``--max-client-batch-size`` are refused first (422).
Each prompt is its own generation, run concurrently. Non-stream: one ``text_completion``
with a choice per prompt (``index`` = its position), usage summed, TGI's ``x-*`` headers
summed over prompts. Stream: the prompts' events interleave as they come (per token a
chunk with ``finish_reason: ""``; each prompt's last event is the final shape, with its
usage and the finish reason not renamed), errors as OpenAI error events, then ``[DONE]``.
The ``model`` reported is always the served one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import falcon
import falcon.asgi

from tgi_core.api import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Usage,
    decode_body,
    encode_json,
)
from tgi_core.errors import (
    IncompleteGenerationStreamError,
    TGIError,
    openai_stream_error_body,
)
from tgi_core.validation import GenerateInput, completion_to_generate
from tgi_server.generation import Generation, Pipeline, generation_headers, run_all
from tgi_server.http_errors import count_request
from tgi_server.middleware import request_body
from tgi_server.resources import Served
from tgi_server.resources.chat import openai_finish_reason, usage
from tgi_server.streaming import (
    DONE_EVENT,
    cancel_on_disconnect,
    merge_streams,
    sse_event,
    start_stream,
)

__all__ = ["Completions"]

# The headers summed over prompts (x-compute-time is not: TGI drops it here).
_SUMMED_HEADERS = (
    "x-compute-characters",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)


class Completions:
    """``POST /v1/completions``."""

    def __init__(self, pipeline: Pipeline, served: Served) -> None:
        self._pipeline = pipeline
        self._served = served

    @cancel_on_disconnect
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self.respond(req, resp, decode_body(request_body(req), CompletionRequest))

    async def respond(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, request: CompletionRequest
    ) -> None:
        """Answer an already decoded request (``/invocations`` comes here too)."""
        pipeline = self._pipeline
        count_request(req, pipeline.metrics)
        started = time.perf_counter()
        inputs = completion_to_generate(request, pipeline.limits)
        if request.stream:
            failures: list[str | None] = []
            streams = [
                self._prompt_events(i, item, started, failures) for i, item in enumerate(inputs)
            ]
            events = self._stream_events(streams, failures)
            start_stream(req, resp, events, self._stream_headers(inputs))
            return
        generations = await run_all(pipeline.generate_complete(item, started) for item in inputs)
        pipeline.metrics.request_success.inc()
        resp.set_headers(self._summed_headers(generations))
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_json(self._completion(generations))

    def _completion(self, generations: list[Generation]) -> Completion:
        choices = [
            CompletionChoice(
                index=index,
                text=generation.text,
                finish_reason=openai_finish_reason(generation.finish_reason),
            )
            for index, generation in enumerate(generations)
        ]
        usages = [usage(generation) for generation in generations]
        total = Usage(
            prompt_tokens=sum(u.prompt_tokens for u in usages),
            completion_tokens=sum(u.completion_tokens for u in usages),
            total_tokens=sum(u.total_tokens for u in usages),
        )
        return Completion(
            created=int(time.time()),
            model=self._served.model_id,
            system_fingerprint=self._served.system_fingerprint,
            choices=choices,
            usage=total,
        )

    def _summed_headers(self, generations: list[Generation]) -> dict[str, str]:
        per_prompt = [generation_headers(g, self._served.compute_type) for g in generations]
        headers = {"x-compute-type": self._served.compute_type}
        for name in _SUMMED_HEADERS:
            headers[name] = str(sum(int(h[name]) for h in per_prompt))
        return headers

    def _stream_headers(self, inputs: list[GenerateInput]) -> dict[str, str]:
        return {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-compute-type": self._served.compute_type,
            "x-compute-characters": str(sum(len(item.inputs) for item in inputs)),
            "x-accel-buffering": "no",
        }

    async def _stream_events(
        self, streams: list[AsyncIterator[bytes]], failures: list[str | None]
    ) -> AsyncIterator[bytes]:
        """The prompts' events interleaved, then ``[DONE]``; counted as one request."""
        metrics = self._pipeline.metrics
        ended = False
        try:
            async for event in merge_streams(streams):
                yield event
            ended = True
            if failures:
                metrics.record_failure(failures[0])
            else:
                metrics.request_success.inc()
            yield DONE_EVENT
        finally:
            if not ended:
                metrics.record_failure("dropped")

    async def _prompt_events(
        self, index: int, item: GenerateInput, started: float, failures: list[str | None]
    ) -> AsyncIterator[bytes]:
        """One prompt's events; its failure is one error event (the others go on) and is
        added to ``failures`` (its metric label)."""
        pipeline = self._pipeline
        try:
            with pipeline.admit():
                valid = await pipeline.validate(item, stream=True)
                async for step in pipeline.stream(valid, started):
                    generation = step.generation
                    choice = CompletionChoice(index=index, text=step.token.text, finish_reason="")
                    if generation is None:
                        chunk = CompletionChunk(
                            created=int(time.time()),
                            choices=[choice],
                            model=self._served.model_id,
                            system_fingerprint=self._served.system_fingerprint,
                        )
                        yield sse_event(encode_json(chunk))
                        continue
                    choice.finish_reason = generation.finish_reason.value
                    final = Completion(
                        created=int(time.time()),
                        model=self._served.model_id,
                        system_fingerprint=self._served.system_fingerprint,
                        choices=[choice],
                        usage=usage(generation),
                    )
                    yield sse_event(encode_json(final))
                    return
                raise IncompleteGenerationStreamError()
        except TGIError as error:
            failures.append(error.metric_label)
            yield sse_event(openai_stream_error_body(error))
