"""``POST /vertex``: Google Vertex AI predictions, ``{"instances": [...]}`` -> ``{"predictions"}``.

Each instance is a generate instance (sampling; only ``max_new_tokens`` and ``seed`` are
honoured) or a chat request (templated first: its template and tool errors answer at once,
with their own status). The instances run concurrently; if any of them fails, the answer
is TGI's 500 "Incomplete generation". No instance at all is a 422, and so are more
instances than ``--max-client-batch-size`` (TGI sets no bound here; we answer as its
``/v1/completions`` does for too many prompts), checked before any instance is templated.
"""

from __future__ import annotations

import time

import falcon
import falcon.asgi

from tgi_core.api import VertexResponse, decode_vertex, encode_json
from tgi_core.errors import BatchSizeExceededError, TGIError, VertexInstanceError
from tgi_core.validation import GenerateInput, vertex_to_generate
from tgi_server.generation import Pipeline, run_all
from tgi_server.http_errors import count_request
from tgi_server.middleware import request_body
from tgi_server.resources.chat import chat_input
from tgi_server.streaming import cancel_on_disconnect

__all__ = ["Vertex"]


class Vertex:
    """``POST /vertex``."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    @cancel_on_disconnect
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = decode_vertex(request_body(req))
        pipeline = self._pipeline
        count_request(req, pipeline.metrics)
        max_instances = pipeline.limits.max_client_batch_size
        if len(request.instances) > max_instances:
            raise BatchSizeExceededError(max_instances)
        started = time.perf_counter()
        inputs: list[GenerateInput] = []
        for item in vertex_to_generate(request):
            if isinstance(item, GenerateInput):
                inputs.append(item)
            else:
                inputs.append(await chat_input(pipeline, item))
        try:
            predictions = await run_all(self._predict(item, started) for item in inputs)
        except TGIError as error:
            pipeline.metrics.record_failure(error.metric_label)
            raise VertexInstanceError() from error
        pipeline.metrics.request_success.inc()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encode_json(VertexResponse(predictions=predictions))

    async def _predict(self, item: GenerateInput, started: float) -> str:
        return (await self._pipeline.generate_complete(item, started)).full_text
