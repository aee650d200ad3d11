"""Async streaming clients: TGI ``/generate_stream`` and OpenAI chat/completions over SSE.

Here live the incremental SSE decoder (TGI's exact framing: ``data: {...}\\n\\n``, ``:``
keep-alive comments, ``data: [DONE]``), the per-API payloads and event readers, and
``stream_request``, which sends one request and records when each token arrived. Load shape
(concurrency, rates, limits) lives in ``runner.py``; statistics in ``report.py``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from tgi_server.benchmark.profiles import BenchRequest

Api = Literal["tgi", "chat", "completions"]
APIS: tuple[Api, ...] = ("tgi", "chat", "completions")
ROUTES: dict[Api, str] = {
    "tgi": "/generate_stream",
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
}
DONE = "[DONE]"
_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Turns a byte stream into the ``data`` payloads of its events, as they complete.

    Follows the SSE spec: lines end in CRLF, LF or CR; an empty line ends an event; lines
    starting with ``:`` are comments (keep-alives); one space after ``data:`` is dropped; several
    ``data`` lines join with newlines; other fields (``event``, ``id``, ``retry``) are ignored.
    Lines are decoded whole, so a UTF-8 character split across chunks is safe.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        payloads: list[str] = []
        while (match := _LINE_END.search(self._buffer)) is not None:
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break  # a CR at the end may be the first half of a CRLF
            line = self._buffer[: match.start()].decode("utf-8")
            self._buffer = self._buffer[match.end() :]
            self._take_line(line, payloads)
        return payloads

    def close(self) -> list[str]:
        """Payloads of an event cut off by the end of the stream (no final blank line)."""
        payloads: list[str] = []
        if self._buffer:
            self._take_line(self._buffer.rstrip(b"\r").decode("utf-8"), payloads)
            self._buffer = b""
        self._take_line("", payloads)
        return payloads

    def _take_line(self, line: str, payloads: list[str]) -> None:
        if not line:
            if self._data:
                payloads.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))


@dataclass(frozen=True)
class StreamEvent:
    """What one SSE payload says, whatever the API.

    ``text`` is the token text (None when the event carries no token, e.g. a role-only chunk or
    a usage chunk); the token counts are the server's own, when the event reports them.
    """

    text: str | None = None
    num_output_tokens: int | None = None
    num_input_tokens: int | None = None
    done: bool = False
    error: str | None = None


@dataclass
class RequestRecord:
    """Timings of one request (``time.perf_counter`` seconds) and what came back."""

    start: float
    end: float = 0.0
    status: int | None = None  # HTTP status, None when no response came
    token_times: list[float] = field(default_factory=list)
    num_token_events: int = 0
    num_output_tokens: int = 0
    num_input_tokens: int | None = None
    usage_reported: bool = False
    output_chars: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.num_output_tokens > 0


def build_payload(
    api: Api,
    request: BenchRequest,
    *,
    model: str = "tgi",
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a greedy streaming request of ``request`` on ``api``.

    ``extra_body`` is merged last (into ``parameters`` for TGI), e.g. ``{"ignore_eos": true}``
    for servers that accept it.
    """
    extra = dict(extra_body or {})
    if api == "tgi":
        parameters = {"max_new_tokens": request.max_new_tokens, "details": True, **extra}
        return {"inputs": request.prompt, "parameters": parameters, "stream": True}
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_new_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        messages = [{"role": role, "content": content} for role, content in request.messages]
        return {**common, "messages": messages, **extra}
    return {**common, "prompt": request.prompt, **extra}


def parse_event(api: Api, payload: str) -> StreamEvent:
    """Reads one SSE ``data`` payload of ``api``; a malformed payload becomes an error event."""
    if payload.strip() == DONE:
        return StreamEvent(done=True)
    try:
        body = json.loads(payload)
    except json.JSONDecodeError:
        return StreamEvent(error=f"malformed event: {payload[:200]!r}")
    if not isinstance(body, dict):
        return StreamEvent(error=f"unexpected event: {payload[:200]!r}")
    if "error" in body:
        return StreamEvent(error=str(body["error"]))
    if api == "tgi":
        return _parse_tgi(body)
    return _parse_openai(api, body)


def _parse_tgi(body: dict[str, Any]) -> StreamEvent:
    token = body.get("token") or {}
    details = body.get("details") or {}
    return StreamEvent(
        text=str(token.get("text", "")),
        num_output_tokens=details.get("generated_tokens"),
        num_input_tokens=details.get("input_length"),
        # TGI sends no [DONE]: the event with the full text is the last one.
        done=body.get("generated_text") is not None,
    )


def _parse_openai(api: Api, body: dict[str, Any]) -> StreamEvent:
    text: str | None = None
    for choice in body.get("choices") or []:
        piece = (choice.get("delta") or {}).get("content") if api == "chat" else choice.get("text")
        if isinstance(piece, str):
            text = piece if text is None else text + piece
    usage = body.get("usage") or {}
    return StreamEvent(
        text=text,
        num_output_tokens=usage.get("completion_tokens"),
        num_input_tokens=usage.get("prompt_tokens"),
    )


def _apply(record: RequestRecord, event: StreamEvent, now: float) -> None:
    if event.error is not None:
        record.error = event.error
    if event.text is not None:
        record.num_token_events += 1
        if event.text:  # empty pieces (special tokens, held-back bytes) are not seen by a user
            record.token_times.append(now)
            record.output_chars += len(event.text)
    if event.num_output_tokens is not None:
        record.num_output_tokens = int(event.num_output_tokens)
        record.usage_reported = True
    if event.num_input_tokens is not None:
        record.num_input_tokens = int(event.num_input_tokens)


async def stream_request(
    client: httpx.AsyncClient,
    api: Api,
    request: BenchRequest,
    *,
    model: str = "tgi",
    extra_body: dict[str, Any] | None = None,
) -> RequestRecord:
    """Sends ``request`` on ``client`` (whose base URL is the server) and times its tokens.

    Never raises for the server's faults: HTTP errors, error events and transport errors end up
    in ``record.error``. The token count is the server's usage when reported, else the number
    of token events.
    """
    body = build_payload(api, request, model=model, extra_body=extra_body)
    record = RequestRecord(start=time.perf_counter())
    for attempt in range(2):
        try:
            await _send(client, api, body, record)
        except httpx.RemoteProtocolError as error:
            # A pooled keep-alive connection the server had just closed (cpp-httplib closes
            # after a few requests): nothing was answered, so sending again is safe, once.
            if record.status is None and attempt == 0:
                continue
            record.error = f"{type(error).__name__}: {error}"
        except httpx.HTTPError as error:
            record.error = f"{type(error).__name__}: {error}"
        break
    record.end = time.perf_counter()
    if not record.usage_reported:
        record.num_output_tokens = record.num_token_events
    return record


async def _send(
    client: httpx.AsyncClient, api: Api, body: dict[str, Any], record: RequestRecord
) -> None:
    async with client.stream("POST", ROUTES[api], json=body) as response:
        record.status = response.status_code
        if response.status_code != httpx.codes.OK:
            text = (await response.aread()).decode("utf-8", "replace")
            record.error = f"HTTP {response.status_code}: {text[:200]}"
        else:
            await _read_stream(api, response, record)


async def _read_stream(api: Api, response: httpx.Response, record: RequestRecord) -> None:
    decoder = SSEDecoder()
    async for chunk in response.aiter_bytes():
        now = time.perf_counter()
        for payload in decoder.feed(chunk):
            _apply(record, parse_event(api, payload), now)
    for payload in decoder.close():
        _apply(record, parse_event(api, payload), time.perf_counter())
