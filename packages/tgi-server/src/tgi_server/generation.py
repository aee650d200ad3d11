"""The request pipeline every generating route shares.

admit (a concurrency permit, ``tgi_server.admission``) -> validate (tokenization on the
validation thread pool) -> ``GenerationRequest`` -> the engine client's ``generate()`` -> per
token: its streamed text, logprob, special flag, top tokens -> ``Generation``, one finished
sequence with TGI's timings. Also here: ``best_of`` (N sequences with their own seeds, the
best mean logprob wins), TGI's ``x-*`` headers and the per-sequence metrics (durations,
token counts).

Each route's JSON and SSE rendering lives in ``tgi_server.resources``, and so do chat
templating (``resources.chat``) and the per-request counting (``tgi_request_count``,
``tgi_request_success``, ``tgi_request_failure``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from tgi_core.api import PrefillToken, Token
from tgi_core.contract import FailureKind, FinishReason, RequestFailed, TokenEvent
from tgi_core.errors import GenerationError, IncompleteGenerationError, OverloadedError, TGIError
from tgi_core.settings.slices import ValidationLimits
from tgi_core.tokenization import IncrementalDetokenizer, TokenizerLike
from tgi_core.validation import GenerateLike, ValidRequest, validate_generate
from tgi_core.validation.generate import TextEncoder
from tgi_server import request_log
from tgi_server.admission import Permit, Permits
from tgi_server.engine_client import EngineClient
from tgi_server.metrics import ServerMetrics
from tgi_server.validation_pool import ValidationWorkers

__all__ = [
    "Generation",
    "Pipeline",
    "StreamStep",
    "Timing",
    "generation_headers",
    "run_all",
]

T = TypeVar("T")


class Timing(NamedTuple):
    """``time.perf_counter()`` instants of one sequence, TGI's four timestamps."""

    started: float  # the request arrived
    queued: float  # validated, submitted to the engine
    inference_started: float  # its prefill began
    first_token: float  # its first token arrived (prefill done)
    finished: float  # its last token arrived

    @property
    def total_s(self) -> float:
        return self.finished - self.started

    @property
    def validation_s(self) -> float:
        return self.queued - self.started

    @property
    def queue_s(self) -> float:
        return self.inference_started - self.queued

    @property
    def inference_s(self) -> float:
        return self.finished - self.inference_started


@dataclass(slots=True, kw_only=True)
class Generation:
    """One finished sequence: its text, tokens (with logprobs), prompt tokens and timings.

    ``text`` is the generated text only; ``full_text`` adds the prompt when the request asked
    for ``return_full_text``. ``prefill`` is empty unless ``decoder_input_details``.
    """

    valid: ValidRequest
    text: str
    finish_reason: FinishReason
    tokens: list[Token]
    top_tokens: list[list[Token]]
    prefill: list[PrefillToken]
    timing: Timing

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    @property
    def full_text(self) -> str:
        return self.valid.inputs + self.text if self.valid.return_full_text else self.text

    @property
    def mean_logprob(self) -> float:
        """TGI's ``best_of`` score."""
        return sum(token.logprob for token in self.tokens) / max(1, len(self.tokens))

    @property
    def time_per_token_s(self) -> float:
        return self.timing.inference_s / max(1, self.generated_tokens)


class StreamStep(NamedTuple):
    """One generated token; ``generation`` is set on the last one."""

    token: Token
    top_tokens: list[Token]
    generation: Generation | None


@dataclass(slots=True)
class _Sequence:
    """Turns one request's token events into TGI tokens, then into a ``Generation``."""

    tokenizer: TokenizerLike
    valid: ValidRequest
    started: float
    queued: float
    detokenizer: IncrementalDetokenizer
    inference_started: float | None = None
    first_token: float | None = None
    ids: list[int] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    top_tokens: list[list[Token]] = field(default_factory=list)
    prefill: list[PrefillToken] = field(default_factory=list)

    def add(self, event: TokenEvent) -> StreamStep:
        if self.inference_started is None:
            self.first_token = time.perf_counter()
            queue_s = event.queue_seconds
            self.inference_started = self.first_token if queue_s is None else self.queued + queue_s
            if self.valid.decoder_input_details and event.prompt_logprobs is not None:
                self.prefill = self._prefill(event.prompt_logprobs)
        token_id = event.token_id
        self.ids.append(token_id)
        text = self.detokenizer.push(token_id)
        token = Token(token_id, text, event.logprob, self.tokenizer.is_special(token_id))
        self.tokens.append(token)
        top = self._top(event) if self.valid.top_n_tokens > 0 else []
        if self.valid.top_n_tokens > 0:
            self.top_tokens.append(top)
        generation = None if event.finish_reason is None else self._finish(event.finish_reason)
        return StreamStep(token, top, generation)

    def _top(self, event: TokenEvent) -> list[Token]:
        ids = [top.token_id for top in event.top_tokens]
        texts = self.tokenizer.decode_tokens(ids)
        return [
            Token(top.token_id, text, top.logprob, self.tokenizer.is_special(top.token_id))
            for top, text in zip(event.top_tokens, texts, strict=True)
        ]

    def _prefill(self, logprobs: tuple[float | None, ...]) -> list[PrefillToken]:
        ids = self.valid.input_ids
        texts = self.tokenizer.decode_tokens(ids)
        return [
            PrefillToken(token_id, text, logprob)
            for token_id, text, logprob in zip(ids, texts, logprobs, strict=False)
        ]

    def _finish(self, reason: FinishReason) -> Generation:
        finished = time.perf_counter()
        inference_started = self.inference_started or finished
        first_token = self.first_token or finished
        timing = Timing(self.started, self.queued, inference_started, first_token, finished)
        return Generation(
            valid=self.valid,
            text=generated_text(self.tokenizer, self.valid.input_ids, self.ids),
            finish_reason=reason,
            tokens=self.tokens,
            top_tokens=self.top_tokens,
            prefill=self.prefill,
            timing=timing,
        )


def generated_text(tokenizer: TokenizerLike, prompt_ids: tuple[int, ...], ids: list[int]) -> str:
    """The generated text without special tokens, decoded as TGI does: after the last
    prompt token, so the first token keeps its leading space."""
    if tokenizer.is_transparent:
        return tokenizer.decode(ids)
    context = list(prompt_ids[-1:])
    prefix = tokenizer.decode(context, skip_special_tokens=True)
    return tokenizer.decode([*context, *ids], skip_special_tokens=True)[len(prefix) :]


class Pipeline:
    """validate -> engine -> tokens, shared by every generating route.

    Args:
        engine: the worker's engine client.
        tokenizer: the tokenizer requests are validated with (shared by the pool's threads).
        limits: the validation limits.
        metrics: where per-sequence durations and token counts go.
        workers: the validation thread pool.
        permits: this worker's concurrency permits (``admit``).
        encoder: what prompts are tokenized with, when not ``tokenizer`` (a VLM's
            ``ImagePromptEncoder``, which also reads the prompt's images).
    """

    def __init__(
        self,
        engine: EngineClient,
        tokenizer: TokenizerLike,
        limits: ValidationLimits,
        metrics: ServerMetrics,
        workers: ValidationWorkers,
        *,
        permits: Permits,
        encoder: TextEncoder | None = None,
    ) -> None:
        self.engine = engine
        self.permits = permits
        self.tokenizer = tokenizer
        self.encoder = encoder or tokenizer
        self.limits = limits
        self.metrics = metrics
        self.workers = workers

    def admit(self) -> Permit:
        """One sequence's permit, taken before ``validate`` and held until its generation
        ends (a context manager).

        Raises:
            OverloadedError: none is free (TGI's immediate 429).
        """
        try:
            return self.permits.take()
        except OverloadedError as error:
            request_log.note_failure(error)
            raise

    async def validate(
        self, request: GenerateLike, *, stream: bool, default_return_full_text: bool = False
    ) -> ValidRequest:
        """TGI's validation (``tgi_core.validation.validate_generate``) on the pool.

        Raises:
            ValidationError: the first broken rule.
        """
        started = time.perf_counter()
        try:
            valid = await self.workers.run(
                validate_generate,
                request,
                self.limits,
                self.encoder,
                stream=stream,
                default_return_full_text=default_return_full_text,
            )
        except TGIError as error:
            request_log.note_failure(error, step="validate", started=started)
            raise
        self.metrics.input_length.observe(valid.input_length)
        self.metrics.max_new_tokens.observe(valid.max_new_tokens_chunk)
        return valid

    async def stream(
        self, valid: ValidRequest, started: float, *, record: bool = True
    ) -> AsyncGenerator[StreamStep, None]:
        """Generate ``valid``: one step per token, the last carries the ``Generation``.

        Ends early (without a final step) only if the engine stream ends without one.
        Closing the iterator aborts the request in the engine.

        Raises:
            OverloadedError, GenerationError: the engine refused or failed the request.
        """
        request = valid.to_generation_request(self.engine.next_request_id())
        queued = time.perf_counter()
        detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_ids=valid.input_ids)
        sequence = _Sequence(self.tokenizer, valid, started, queued, detokenizer)
        async with aclosing(self.engine.generate(request)) as events:
            async for event in events:
                if isinstance(event, RequestFailed):
                    error = _engine_error(event)
                    request_log.note_failure(error)
                    raise error
                step = sequence.add(event)
                if step.generation is not None and record:
                    self.record(step.generation)
                yield step
                if step.generation is not None:
                    return

    async def generate(
        self, valid: ValidRequest, started: float, *, record: bool = True
    ) -> Generation | None:
        """The finished sequence of ``valid`` (None if the engine stream ended early)."""
        async with aclosing(self.stream(valid, started, record=record)) as steps:
            async for step in steps:
                if step.generation is not None:
                    return step.generation
        return None

    async def generate_complete(self, request: GenerateLike, started: float) -> Generation:
        """Admit, validate (not streaming) and generate one sequence, which must finish.

        Raises:
            OverloadedError: as ``admit``, or from the engine.
            ValidationError, GenerationError: as ``validate``/``stream``.
            IncompleteGenerationError: the engine stream ended without its final token.
        """
        with self.admit():
            valid = await self.validate(request, stream=False)
            generation = await self.generate(valid, started)
        if generation is None:
            raise IncompleteGenerationError()
        return generation

    async def generate_best_of(
        self, valid: ValidRequest, started: float
    ) -> tuple[Generation | None, list[Generation]]:
        """``best_of`` sequences (each its own seed), the best first, then the others.

        A single sequence when ``best_of`` is 1. One failure fails them all.
        """
        if valid.best_of <= 1:
            return await self.generate(valid, started), []
        variants = [valid, *(valid.with_random_seed() for _ in range(valid.best_of - 1))]
        results = await run_all(self.generate(v, started, record=False) for v in variants)
        generations = [g for g in results if g is not None]
        if len(generations) < len(results):
            return None, []
        best = max(generations, key=lambda generation: generation.mean_logprob)
        self.record(best)
        return best, [g for g in generations if g is not best]

    def record(self, generation: Generation) -> None:
        """The per-sequence metrics of a finished generation (and its request's log line
        and trace)."""
        request_log.note_generation(generation)
        metrics, timing = self.metrics, generation.timing
        metrics.request_duration.observe(timing.total_s)
        metrics.validation_duration.observe(timing.validation_s)
        metrics.queue_duration.observe(timing.queue_s)
        metrics.inference_duration.observe(timing.inference_s)
        metrics.mean_time_per_token_duration.observe(generation.time_per_token_s)
        metrics.generated_tokens.observe(generation.generated_tokens)


def _engine_error(event: RequestFailed) -> TGIError:
    """TGI's words for an engine failure: its kind picks the error, its detail is the
    shard's ``Server error: ...``."""
    if event.kind == FailureKind.OVERLOADED:
        return OverloadedError()
    return GenerationError(f"Server error: {event.detail}")


async def run_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all concurrently; on the first failure cancel the rest, then raise it."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def generation_headers(generation: Generation, compute_type: str) -> dict[str, str]:
    """TGI's response headers of a non-stream generation (seconds, then whole ms)."""
    timing = generation.timing
    return {
        "x-compute-type": compute_type,
        "x-compute-time": str(timing.total_s),
        "x-compute-characters": str(len(generation.valid.inputs)),
        "x-total-time": _ms(timing.total_s),
        "x-validation-time": _ms(timing.validation_s),
        "x-queue-time": _ms(timing.queue_s),
        "x-inference-time": _ms(timing.inference_s),
        "x-time-per-token": _ms(generation.time_per_token_s),
        "x-prompt-tokens": str(generation.valid.input_length),
        "x-generated-tokens": str(generation.generated_tokens),
    }


def _ms(seconds: float) -> str:
    return str(int(max(0.0, seconds) * 1000))
