"""TGI's native generation routes: ``POST /``, ``POST /generate``, ``POST /generate_stream``.

``/generate`` answers a ``GenerateResponse`` (``details`` only when asked; ``best_of``
sequences), ``POST /`` a one-element list of it, or the same stream as
``/generate_stream`` when ``stream`` is set. A stream is always HTTP 200: validation,
engine and "incomplete" errors arrive as one ``{"error", "error_type"}`` event, then the
stream ends (no ``[DONE]`` here). ``GET /`` is the health check.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import falcon
import falcon.asgi

from tgi_core.api import (
    BestOfSequence,
    CompatGenerateRequest,
    Details,
    GenerateRequest,
    GenerateResponse,
    StreamDetails,
    StreamResponse,
    decode_body,
    encode_json,
)
from tgi_core.errors import IncompleteGenerationError, IncompleteGenerationStreamError, TGIError
from tgi_core.validation import GenerateLike
from tgi_server.generation import Generation, Pipeline, generation_headers
from tgi_server.http_errors import count_request
from tgi_server.middleware import request_body
from tgi_server.resources import Served
from tgi_server.resources.health import Health
from tgi_server.streaming import cancel_on_disconnect, sse_event, sse_headers, start_stream

__all__ = ["CompatGenerate", "Generate", "GenerateStream", "generate_response"]


class Generate:
    """``POST /generate``."""

    def __init__(self, pipeline: Pipeline, served: Served) -> None:
        self._pipeline = pipeline
        self._served = served

    @cancel_on_disconnect
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = decode_body(request_body(req), GenerateRequest)
        count_request(req, self._pipeline.metrics)
        response, headers = await generate(self._pipeline, self._served, request)
        resp.set_headers(headers)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_json(response)


class GenerateStream:
    """``POST /generate_stream``."""

    def __init__(self, pipeline: Pipeline, served: Served) -> None:
        self._pipeline = pipeline
        self._served = served

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = decode_body(request_body(req), GenerateRequest)
        count_request(req, self._pipeline.metrics)
        events = stream_events(self._pipeline, request, default_return_full_text=False)
        start_stream(req, resp, events, sse_headers(self._served.compute_type, len(request.inputs)))


class CompatGenerate:
    """``POST /`` (``return_full_text`` defaults to the served model's choice) and ``GET /``."""

    def __init__(self, pipeline: Pipeline, served: Served, health: Health) -> None:
        self._pipeline = pipeline
        self._served = served
        self._health = health

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._health.on_get(req, resp)

    @cancel_on_disconnect
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self.respond(req, resp, decode_body(request_body(req), CompatGenerateRequest))

    async def respond(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, request: CompatGenerateRequest
    ) -> None:
        """Answer an already decoded request (``/invocations`` comes here too)."""
        count_request(req, self._pipeline.metrics)
        default = self._served.default_return_full_text
        if request.stream:
            events = stream_events(self._pipeline, request, default_return_full_text=default)
            headers = sse_headers(self._served.compute_type, len(request.inputs))
            start_stream(req, resp, events, headers)
            return
        response, headers = await generate(
            self._pipeline, self._served, request, default_return_full_text=default
        )
        resp.set_headers(headers)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_json([response])


async def generate(
    pipeline: Pipeline,
    served: Served,
    request: GenerateLike,
    *,
    default_return_full_text: bool = False,
) -> tuple[GenerateResponse, dict[str, str]]:
    """Validate and generate (``best_of`` included); the response and its headers.

    Raises:
        TGIError: validation, engine or incomplete-generation errors.
    """
    started = time.perf_counter()
    with pipeline.admit() as permit:
        valid = await pipeline.validate(
            request, stream=False, default_return_full_text=default_return_full_text
        )
        permit.add(valid.best_of - 1)  # one per sequence, as TGI's best_of takes
        best, others = await pipeline.generate_best_of(valid, started)
    if best is None:
        raise IncompleteGenerationError()
    pipeline.metrics.request_success.inc()
    return generate_response(best, others), generation_headers(best, served.compute_type)


def generate_response(best: Generation, others: list[Generation]) -> GenerateResponse:
    """A ``GenerateResponse``: ``details`` when ``details`` or ``decoder_input_details``."""
    valid = best.valid
    if not (valid.details or valid.decoder_input_details):
        return GenerateResponse(generated_text=best.full_text)
    best_of_sequences = [
        BestOfSequence(
            generated_text=other.full_text,
            finish_reason=other.finish_reason,
            generated_tokens=other.generated_tokens,
            seed=other.valid.seed,
            prefill=other.prefill,
            tokens=other.tokens,
            top_tokens=other.top_tokens,
        )
        for other in others
    ]
    details = Details(
        finish_reason=best.finish_reason,
        generated_tokens=best.generated_tokens,
        seed=valid.seed,
        prefill=best.prefill,
        tokens=best.tokens,
        best_of_sequences=best_of_sequences or None,
        top_tokens=best.top_tokens,
    )
    return GenerateResponse(generated_text=best.full_text, details=details)


async def stream_events(
    pipeline: Pipeline, request: GenerateLike, *, default_return_full_text: bool
) -> AsyncIterator[bytes]:
    """The SSE events of ``/generate_stream``: one per token, or one error event."""
    metrics = pipeline.metrics
    started = time.perf_counter()
    ended = False
    try:
        try:
            with pipeline.admit():
                valid = await pipeline.validate(
                    request, stream=True, default_return_full_text=default_return_full_text
                )
                index = 0
                async for step in pipeline.stream(valid, started):
                    index += 1
                    event = StreamResponse(
                        index=index,
                        token=step.token,
                        top_tokens=step.top_tokens,
                        generated_text=None,
                        details=None,
                    )
                    generation = step.generation
                    if generation is not None:
                        event.generated_text = generation.full_text
                        event.details = _stream_details(generation)
                        ended = True
                    yield sse_event(encode_json(event))
            if not ended:
                raise IncompleteGenerationStreamError()
            metrics.request_success.inc()
        except TGIError as error:
            ended = True
            metrics.record_failure(error.metric_label)
            yield sse_event(error.to_json())
    finally:
        if not ended:  # the client went away first
            metrics.record_failure("dropped")


def _stream_details(generation: Generation) -> StreamDetails | None:
    valid = generation.valid
    if not valid.details:
        return None
    return StreamDetails(
        finish_reason=generation.finish_reason,
        generated_tokens=generation.generated_tokens,
        seed=valid.seed,
        input_length=valid.input_length,
    )
