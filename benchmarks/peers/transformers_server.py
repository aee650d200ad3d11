"""The naive baseline peer: transformers ``generate``, one request at a time, behind HTTP.

What a user without a serving stack writes: load the GGUF with
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` in bf16, and answer OpenAI
``POST /v1/chat/completions`` (streaming through ``TextIteratorStreamer``, or not) while a lock
lets one ``generate`` run at a time. The route, chat template and options are
``openai_peer.py``'s, shared with the batched baseline (``transformers_batched_server.py``).

    python benchmarks/peers/transformers_server.py --port 8081

No batching on purpose.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import torch
from openai_peer import Backend, ChatRequest, configure, fill_usage, parser, serve
from transformers import StoppingCriteria, TextIteratorStreamer


class _Cancelled(StoppingCriteria):
    """Stops ``generate`` once the client has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> bool:
        return self.event.is_set()


class SerialGenerator(Backend):
    """One model, one lock: requests queue on the lock, first come first served."""

    def __init__(self, folder: str, gguf_file: str, dtype: torch.dtype) -> None:
        super().__init__(folder, gguf_file, dtype)
        self.lock = threading.Lock()

    def stream(self, request: ChatRequest, usage: dict[str, int]) -> Generator[str, None, None]:
        cancel = threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        input_ids = torch.tensor([request.input_ids])
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": request.max_tokens,
            "streamer": streamer,
            "stopping_criteria": [_Cancelled(cancel)],
            "do_sample": request.temperature > 0,
            "pad_token_id": self.tokenizer.eos_token_id,
        }
        if request.temperature > 0:
            kwargs.update(temperature=request.temperature, top_p=request.top_p)
        if request.ignore_eos:
            kwargs["min_new_tokens"] = request.max_tokens
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
        num_prompt = len(request.input_ids)
        fill_usage(usage, request, int(output[0].shape[1]) - num_prompt if output else 0)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    dtype = configure(args)
    serve(
        SerialGenerator(args.model_dir, args.gguf_file, dtype), args.host, args.port, "transformers"
    )


if __name__ == "__main__":
    main()
