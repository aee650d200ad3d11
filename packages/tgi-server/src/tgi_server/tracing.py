"""OpenTelemetry traces of the generating routes (``--otlp-endpoint``, ``--otlp-service-name``).

Each worker process sets up its own ``TracerProvider`` (``start_tracing``, from the app
factory in ``tgi_server.asgi``): resource ``service.name`` = ``--otlp-service-name``
(TGI's default ``text-generation-inference.router``), a ``BatchSpanProcessor`` and the
OTLP/HTTP exporter, shut down (flushed) at the worker's ASGI lifespan shutdown. TGI's router
exports over OTLP/gRPC; we speak OTLP/HTTP, so point ``--otlp-endpoint`` at the collector's
HTTP port (4318): ``/v1/traces`` is appended unless the URL already ends with it.

Spans are named and nested as TGI's router names them. One per request, started when the
request reaches its route (a child of the caller's span when a W3C ``traceparent`` header
came with it), named after TGI's handler (``generate``, ``generate_stream``,
``compat_generate``, ``chat_completions``, ``completions``, ``vertex_compatibility``,
``sagemaker_compatibility``), with TGI's fields as attributes and the ``request_id``. Under
it, per finished sequence, spans built afterwards from the worker's own timings (no
engine-side tracing):

    <route>
    ├── validate   request arrival -> submitted to the engine
    ├── queued     submitted -> its prefill began
    └── infer      prefill began -> last token
        ├── prefill    -> first token
        └── decode     first token -> last token (when there is more than one)

A failure sets the request span's status to ERROR with the error's message (and a
``validate`` span with ERROR when validation is what failed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tgi_core.settings.slices import ServerSettings

if TYPE_CHECKING:
    from tgi_server.generation import Generation

__all__ = ["RequestSpan", "TracerCloser", "otlp_traces_url", "start_tracing"]

_TRACES_PATH = "/v1/traces"
_PROPAGATOR = TraceContextTextMapPropagator()


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``--otlp-endpoint`` (``/v1/traces`` added to a base URL)."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    if not path.endswith(_TRACES_PATH):
        path += _TRACES_PATH
    return urlunsplit(parts._replace(path=path))


def start_tracing(settings: ServerSettings) -> TracerProvider | None:
    """This process's tracer provider, exporting to ``settings.otlp_endpoint``; None when
    no endpoint is set (no traces)."""
    if settings.otlp_endpoint is None:
        return None
    resource = Resource.create({"service.name": settings.otlp_service_name})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=otlp_traces_url(settings.otlp_endpoint))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class TracerCloser:
    """ASGI lifespan middleware: flushes and shuts the worker's tracer provider down."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider

    async def process_shutdown(self, scope: object, event: object) -> None:
        self._provider.shutdown()


class RequestSpan:
    """The span of one request, and the spans of its sequences made from their timings.

    Args:
        tracer: where spans go.
        name: TGI's handler name of the route.
        headers: the request's ``traceparent`` / ``tracestate`` (W3C trace context).
        attributes: set on the request span at once (request id, HTTP method and route).
    """

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        headers: Mapping[str, str],
        attributes: Mapping[str, str],
    ) -> None:
        self._tracer = tracer
        parent = _PROPAGATOR.extract(carrier=dict(headers))
        self.span: Span = tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
        )

    def add_sequence(self, generation: Generation) -> None:
        """The ``validate``, ``queued`` and ``infer`` (``prefill``, ``decode``) spans of a
        finished sequence, placed at its timings."""
        timing = generation.timing
        at = _EpochClock()
        self._child(self.span, "validate", at(timing.started), at(timing.queued))
        self._child(self.span, "queued", at(timing.queued), at(timing.inference_started))
        infer = self._tracer.start_span(
            "infer",
            context=trace.set_span_in_context(self.span),
            start_time=at(timing.inference_started),
            attributes={
                "input_length": generation.valid.input_length,
                "generated_tokens": generation.generated_tokens,
                "finish_reason": generation.finish_reason.value,
            },
        )
        self._child(infer, "prefill", at(timing.inference_started), at(timing.first_token))
        if generation.generated_tokens > 1:
            self._child(infer, "decode", at(timing.first_token), at(timing.finished))
        infer.end(at(timing.finished))

    def add_failed_step(self, name: str, started: float, finished: float, message: str) -> None:
        """A step (``validate``) that failed with ``message``."""
        at = _EpochClock()
        span = self._child(self.span, name, at(started), None)
        span.set_status(Status(StatusCode.ERROR, message))
        span.end(at(finished))

    def end(self, attributes: Mapping[str, str | int], error: str | None) -> None:
        """End the request span now, with TGI's fields and its outcome."""
        self.span.set_attributes(dict(attributes))
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()

    def _child(self, parent: Span, name: str, start: int, end: int | None) -> Span:
        span = self._tracer.start_span(
            name, context=trace.set_span_in_context(parent), start_time=start
        )
        if end is not None:
            span.end(max(start, end))
        return span


class _EpochClock:
    """``time.perf_counter()`` instants as the epoch nanoseconds spans take."""

    def __init__(self) -> None:
        self._offset = time.time() - time.perf_counter()

    def __call__(self, instant: float) -> int:
        return int((instant + self._offset) * 1e9)
