"""OpenAI legacy completions as TGI serves them: ``/v1/completions``.

``CompletionRequest`` (``prompt`` is a string or a non-empty list of strings), the final
answer ``Completion`` (also the last stream event of each prompt) and the per-token
stream event ``CompletionChunk``. The mapping to generate requests lives in
``tgi_core.validation.completions``.
"""

from __future__ import annotations

import msgspec

from tgi_core.api.common import U32, U64, Usage, check_u64

__all__ = ["Completion", "CompletionChoice", "CompletionChunk", "CompletionRequest"]


class CompletionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``/v1/completions``.

    ``model`` other than ``"tgi"`` selects a LoRA adapter; ``suffix`` is rejected (422);
    ``temperature`` exactly 0 means greedy, anything else samples.
    """

    model: str | None = None
    prompt: str | tuple[str, ...]
    max_tokens: U32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    seed: U64 | None = None
    suffix: str | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_u64("seed", self.seed)
        if self.prompt == ():
            msg = "Empty array detected. Do not use an empty array for the prompt."
            raise ValueError(msg)

    @property
    def prompts(self) -> tuple[str, ...]:
        """The prompts as a tuple (a single string is one prompt)."""
        return (self.prompt,) if isinstance(self.prompt, str) else self.prompt

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        """``stop`` as a tuple (a single string is one stop sequence)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else self.stop


class CompletionChoice(msgspec.Struct, kw_only=True):
    """One prompt's text; ``index`` is the prompt's position in the request.

    ``logprobs`` is always ``null`` in TGI. ``finish_reason`` is ``""`` on per-token
    stream events.
    """

    index: int
    text: str
    logprobs: list[float] | None = None
    finish_reason: str


class Completion(msgspec.Struct, kw_only=True, tag_field="object", tag="text_completion"):
    """The non-stream answer (usage summed over prompts); also each prompt's final event."""

    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(msgspec.Struct, kw_only=True, tag_field="object", tag="text_completion"):
    """A per-token stream event (note TGI's key order: ``choices`` before ``model``)."""

    id: str = ""
    created: int
    choices: list[CompletionChoice]
    model: str
    system_fingerprint: str
