"""One log line per finished request, in TGI's form; its request id; its trace.

``RequestObserver`` (middleware) follows each POST to a generating route once it reaches
the route: it takes the caller's ``x-request-id`` (or makes one), sends it back in the
response's ``x-request-id`` header, starts the request's span (``tgi_server.tracing``) and
makes a ``RequestRecord`` current for the request's tasks. The pipeline notes what happens
(``note_generation``, ``note_failure``); when the answer is sent (a stream: when it ends)
the record is finished: the span ends and one line is logged, as TGI's router logs from
its handler's span::

    2024-05-22T19:31:48.302239Z  INFO tgi_server.request_log: generate{request_id="7c0f…"
    parameters=GenerateParameters { do_sample: false, max_new_tokens: 20, … }
    total_time="1.201438s" validation_time="1.113ms" queue_time="63.2µs"
    inference_time="1.199262s" time_per_token="59.963ms" seed="None"
    finish_reason="length" generated_tokens=20}: Success

(one line; durations as Rust prints them). A failure is logged at ERROR with the error's
message (TGI's ``tracing::error!``), a client that left at WARN. Prompts and generated text
are never in these lines: at DEBUG, ``Input: …`` and ``Output: …`` lines carry them, as in
TGI. With ``--json-output`` the same fields are also in the record's ``fields``. Requests
rejected before TGI's handler would run (a body that does not decode) get no line.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import falcon.asgi
from opentelemetry.trace import Tracer

from tgi_core.errors import TGIError
from tgi_server.tracing import RequestSpan

if TYPE_CHECKING:
    from tgi_server.generation import Generation

__all__ = [
    "REQUEST_ID_HEADER",
    "ROUTE_SPANS",
    "RequestObserver",
    "RequestRecord",
    "note_failure",
    "note_generation",
    "rust_duration",
]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
ROUTE_SPANS = {
    "/": "compat_generate",
    "/generate": "generate",
    "/generate_stream": "generate_stream",
    "/v1/chat/completions": "chat_completions",
    "/v1/completions": "completions",
    "/vertex": "vertex_compatibility",
    "/invocations": "sagemaker_compatibility",
}
"""The observed routes and TGI's handler names, which name their spans and log lines."""

_MAX_REQUEST_ID = 128
_CLIENT_CLOSED_REQUEST = 499


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What happened to one request, noted by the pipeline as it runs."""

    route: str
    request_id: str
    started: float
    span: RequestSpan | None
    generations: list[Generation] = field(default_factory=list)
    error: TGIError | None = None
    finished: bool = False


_current: ContextVar[RequestRecord | None] = ContextVar("tgi_request_record", default=None)


def note_generation(generation: Generation) -> None:
    """A sequence of the current request finished (its timings go to the line and trace)."""
    record = _current.get()
    if record is not None:
        record.generations.append(generation)
        if record.span is not None:
            record.span.add_sequence(generation)


def note_failure(error: TGIError, *, step: str | None = None, started: float = 0.0) -> None:
    """The current request failed with ``error``, in ``step`` (begun at ``started``) if
    named: a ``validate`` span with the error goes to its trace."""
    record = _current.get()
    if record is None:
        return
    record.error = record.error or error
    if step is not None and record.span is not None:
        record.span.add_failed_step(step, started, time.perf_counter(), error.message)


class RequestObserver:
    """Middleware: the request id, span and log line of each generating request.

    Args:
        tracer: where request spans go; None: no traces.
    """

    def __init__(self, tracer: Tracer | None) -> None:
        self._tracer = tracer

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        route = ROUTE_SPANS.get(req.path)
        if resource is None or req.method != "POST" or route is None:
            return
        request_id = _request_id(req.get_header(REQUEST_ID_HEADER))
        resp.set_header(REQUEST_ID_HEADER, request_id)
        span = None
        if self._tracer is not None:
            context = {
                name: value
                for name in ("traceparent", "tracestate")
                if (value := req.get_header(name)) is not None
            }
            attributes = {"request_id": request_id, "http.method": "POST", "http.route": req.path}
            span = RequestSpan(self._tracer, route, context, attributes)
        record = RequestRecord(route, request_id, time.perf_counter(), span)
        req.context.request_record = record
        _current.set(record)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        record: RequestRecord | None = req.context.get("request_record")
        if record is None:
            return
        counted = bool(req.context.get("counted", False))
        status = resp.status_code
        if resp.stream is not None and status == 200:
            resp.stream = _ObservedStream(resp.stream, record, counted)
            return
        body = resp.data if isinstance(resp.data, bytes) else b""
        _finish(record, counted=counted, status=status, body=body)


class _ObservedStream:
    """A response body that finishes its request's record when it ends or is closed."""

    def __init__(self, stream: Any, record: RequestRecord, counted: bool) -> None:
        self._stream = stream
        self._record = record
        self._counted = counted

    def __aiter__(self) -> _ObservedStream:
        return self

    async def __anext__(self) -> bytes:
        chunk: bytes = await self._stream.__anext__()
        return chunk

    async def close(self) -> None:
        if hasattr(self._stream, "close"):
            await self._stream.close()
        # EventStream knows whether its client left before the end
        left = bool(getattr(self._stream, "client_left", False))
        status = _CLIENT_CLOSED_REQUEST if left else 200
        _finish(self._record, counted=self._counted, status=status, body=b"")


def _finish(record: RequestRecord, *, counted: bool, status: int, body: bytes) -> None:
    """End the request's span and, if TGI's handler ran (``counted``), log its line."""
    if record.finished:
        return
    record.finished = True
    error = _error_message(record, status, body)
    last = record.generations[-1] if record.generations else None
    if error is None and last is None:
        error = "Incomplete generation"
    fields: dict[str, str | int] = {"request_id": record.request_id}
    if last is not None:
        fields.update(_generation_fields(last))
    else:
        fields["total_time"] = rust_duration(time.perf_counter() - record.started)
    if record.span is not None:
        record.span.end({**fields, "http.status_code": status}, error)
    if not counted:
        return
    span_text = " ".join(f"{name}={_field_text(value)}" for name, value in fields.items())
    prefix = f"{record.route}{{{span_text}}}: "
    extra = {"fields": {"span": {"name": record.route, **fields}}}
    if error is None:
        logger.info("%sSuccess", prefix, extra=extra)
    elif status == _CLIENT_CLOSED_REQUEST:
        logger.warning("%s%s", prefix, error, extra=extra)
    else:
        logger.error("%s%s", prefix, error, extra=extra)
    if logger.isEnabledFor(logging.DEBUG) and last is not None:
        logger.debug("%sInput: %s", prefix, last.valid.inputs)
        logger.debug("%sOutput: %s", prefix, last.text)


def _error_message(record: RequestRecord, status: int, body: bytes) -> str | None:
    if status == _CLIENT_CLOSED_REQUEST:
        return "client disconnected"
    if record.error is not None:
        return record.error.message
    if status < 400:
        return None
    text = body.decode(errors="replace")
    if text.startswith("{"):  # TGI's {"error", "error_type"} body
        try:
            return str(json.loads(text)["error"])
        except (ValueError, KeyError, TypeError):
            pass
    return text or f"HTTP {status}"


def _generation_fields(generation: Generation) -> dict[str, str | int]:
    timing, valid = generation.timing, generation.valid
    seed = f"Some({valid.seed})" if valid.seed is not None else "None"
    return {
        "parameters": _parameters(generation),
        "total_time": rust_duration(timing.total_s),
        "validation_time": rust_duration(timing.validation_s),
        "queue_time": rust_duration(timing.queue_s),
        "inference_time": rust_duration(timing.inference_s),
        "time_per_token": rust_duration(generation.time_per_token_s),
        "seed": seed,
        "finish_reason": generation.finish_reason.value,
        "generated_tokens": generation.generated_tokens,
    }


def _parameters(generation: Generation) -> str:
    """The resolved parameters, Rust ``Debug``-style (no prompt; a grammar only as set)."""
    valid, sampling = generation.valid, generation.valid.sampling
    values = {
        "best_of": valid.best_of,
        "do_sample": sampling.do_sample,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "typical_p": sampling.typical_p,
        "repetition_penalty": sampling.repetition_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "max_new_tokens": valid.max_new_tokens,
        "stop": list(valid.stop_sequences),
        "truncate": valid.truncate,
        "return_full_text": valid.return_full_text,
        "details": valid.details,
        "decoder_input_details": valid.decoder_input_details,
        "top_n_tokens": valid.top_n_tokens,
        "watermark": valid.watermark,
        "grammar": sampling.grammar is not None,
        "adapter_id": valid.adapter_id,
    }
    inner = ", ".join(f"{name}: {_rust_value(value)}" for name, value in values.items())
    return f"GenerateParameters {{ {inner} }}"


def _rust_value(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_rust_value(item) for item in value) + "]"
    return repr(value)


def _field_text(value: str | int) -> str:
    # tracing prints a Debug field bare and a recorded string quoted
    if isinstance(value, int) or value.startswith("GenerateParameters"):
        return str(value)
    return f'"{value}"'


def rust_duration(seconds: float) -> str:
    """A duration as Rust's ``Debug`` prints ``std::time::Duration`` (``1.5ms``, ``2.25s``)."""
    nanos = max(0, round(seconds * 1e9))
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("µs", 10**3)):
        if nanos >= scale:
            whole, rest = divmod(nanos, scale)
            digits = str(rest).rjust(len(str(scale)) - 1, "0").rstrip("0")
            return f"{whole}.{digits}{unit}" if digits else f"{whole}{unit}"
    return f"{nanos}ns"


def _request_id(given: str | None) -> str:
    """The caller's ``x-request-id`` when it is a sane token, else a new one."""
    if given and len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex
