"""The batched baseline peer: transformers' own continuous batching, behind the same HTTP.

What a user of transformers gets without a serving stack of their own: the model's
``init_continuous_batching()`` manager (transformers.generation.continuous_batching: paged KV
cache, requests join and leave the running batch at every step) fed by the OpenAI chat route
of ``openai_peer.py``, which the serial baseline (``transformers_server.py``) uses too: same
GGUF, dtype, chat template and options. A router thread takes each step's outputs from the
manager and feeds every request's own ``TextIteratorStreamer``, so tokens stream as they come.

    python benchmarks/peers/transformers_batched_server.py --port 8081 --max-batch 32

Greedy only (the benchmark sends temperature 0): the manager samples with one generation
config for every request, so a request asking for sampling is refused rather than answered
greedily.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch
from openai_peer import Backend, ChatRequest, configure, fill_usage, parser, serve
from transformers import ContinuousBatchingConfig, GenerationConfig, TextIteratorStreamer
from transformers.generation.continuous_batching.requests import GenerationOutput

# Without a cap the manager sizes its KV cache to 60% of the host's RAM (its CPU default).
DEFAULT_KV_CACHE_TOKENS = 32 * 1024
# Tokens per forward, which caps prefill chunks; transformers' default (8192) makes the
# attention mask it allocates for that many queries against the whole cache several GiB.
DEFAULT_MAX_BATCH_TOKENS = 2048


@dataclass
class _Stream:
    """One request's way back from the router thread to its HTTP handler."""

    streamer: TextIteratorStreamer
    num_generated: int = 0
    error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class BatchedGenerator(Backend):
    """One continuous-batching manager for every request; the HTTP threads only wait."""

    def __init__(
        self,
        folder: str,
        gguf_file: str,
        dtype: torch.dtype,
        *,
        max_batch: int,
        kv_cache_tokens: int,
        max_batch_tokens: int,
    ) -> None:
        super().__init__(folder, gguf_file, dtype)
        eos = self.tokenizer.eos_token_id
        generation = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
        batching = ContinuousBatchingConfig(
            max_requests_per_batch=max_batch, max_batch_tokens=max_batch_tokens
        )
        batching.num_blocks = -(-kv_cache_tokens // batching.page_size)
        self.manager = self.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=batching
        )
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        with torch.inference_mode():  # the manager's thread keeps its caller's mode
            self.manager.start()
        threading.Thread(target=self._route, name="router", daemon=True).start()

    def parse(self, body: dict[str, Any]) -> ChatRequest:
        request = super().parse(body)
        if request.temperature > 0:
            raise ValueError("this peer decodes greedily: `temperature` must be 0")
        return request

    def stream(self, request: ChatRequest, usage: dict[str, int]) -> Generator[str, None, None]:
        request_id = uuid.uuid4().hex
        state = _Stream(TextIteratorStreamer(self.tokenizer, skip_special_tokens=True))
        with self._lock:
            self._streams[request_id] = state
        try:
            accepted = self.manager.add_request(
                request.input_ids,
                request_id=request_id,
                max_new_tokens=request.max_tokens,
                streaming=True,
                eos_token_id=-1 if request.ignore_eos else None,  # -1: no EOS for this request
            )
            if accepted is None:  # the manager drops what it gets once its loop has stopped
                raise RuntimeError("the continuous batching loop is not running")
            yield from state.streamer
        finally:
            if not state.finished.is_set():  # the client left: free its slot in the batch
                self.manager.cancel_request(request_id)
            with self._lock:
                del self._streams[request_id]
        if state.error is not None:
            raise RuntimeError(f"generation failed: {state.error}")
        fill_usage(usage, request, state.num_generated)

    def _route(self) -> None:
        """Hands every output of the manager to its request's streamer, in order."""
        while True:
            output = self.manager.get_result(timeout=1.0)
            if output is not None:
                self._deliver(output)
            elif not self.manager.is_running():
                break
        with self._lock:  # the manager died: nothing more will come for anyone
            for state in self._streams.values():
                state.error = "the continuous batching loop stopped"
                self._finish(state)

    def _deliver(self, output: GenerationOutput) -> None:
        with self._lock:
            state = self._streams.get(output.request_id)
        if state is None:  # cancelled, its handler gone
            return
        # Streaming outputs carry every token generated so far: put only the new ones.
        new_tokens = output.generated_tokens[state.num_generated :]
        state.num_generated += len(new_tokens)
        if new_tokens:
            state.streamer.put(torch.tensor(new_tokens))  # type: ignore[no-untyped-call]
        if output.is_finished():
            state.error = output.error
            self._finish(state)

    @staticmethod
    def _finish(state: _Stream) -> None:
        state.finished.set()
        state.streamer.end()  # type: ignore[no-untyped-call]


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--max-batch", type=int, default=32, help="requests per step")
    cli.add_argument(
        "--kv-cache-tokens", type=int, default=DEFAULT_KV_CACHE_TOKENS, help="paged KV capacity"
    )
    cli.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    args = cli.parse_args()
    dtype = configure(args)
    backend = BatchedGenerator(
        args.model_dir, args.gguf_file, dtype, max_batch=args.max_batch,
        kv_cache_tokens=args.kv_cache_tokens, max_batch_tokens=args.max_batch_tokens,
    )  # fmt: skip
    serve(backend, args.host, args.port, "transformers-batched")


if __name__ == "__main__":
    main()
