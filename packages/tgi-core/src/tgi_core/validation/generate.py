"""Validation of a generate request, in TGI's order and with TGI's messages.

``validate_generate`` turns a decoded request (``GenerateRequest``, ``CompatGenerateRequest``
or a ``GenerateInput`` built from a chat/completion request) into a ``ValidRequest``: the
prompt tokenized (and truncated), every default resolved, the sampling decision made. It
raises ``tgi_core.errors.ValidationError`` ("Input validation error: ...") on the first
broken rule.

Tokenization is behind the ``TextEncoder`` protocol: any object with TGI's ``encode``
semantics will do. Nothing here talks to the engine; ``ValidRequest.to_generation_request``
builds the engine's message.

A ``grammar`` (a request's own, a chat ``response_format`` or a chat tool grammar) is
checked last, as in TGI, and compiled to the regex ``ValidRequest.sampling.grammar``
carries to the runner (``tgi_core.validation.grammar``).
"""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from tgi_core.api.generate import GenerateParameters
from tgi_core.contract import GenerationRequest, ImageInput, SamplingParams
from tgi_core.errors import ValidationError
from tgi_core.settings.slices import ValidationLimits
from tgi_core.validation.grammar import compile_grammar

__all__ = [
    "MAX_STOP_SEQUENCE_CHARS",
    "GenerateInput",
    "GenerateLike",
    "ImagePromptEncoder",
    "TextEncoder",
    "ValidRequest",
    "random_seed",
    "validate_generate",
]


MAX_STOP_SEQUENCE_CHARS = 300
"""Longest stop sequence accepted: the stop checker matches the last 300 characters of the
text (TGI's tail, ``tgi_core.tokenization.stop.MAX_STOP_TAIL_CHARS``), so a longer one could
never match, and it would cost the engine thread at every token."""


class TextEncoder(Protocol):
    """Turns text into token ids (the tokenizer's ``encode``)."""

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Sequence[int]: ...


@runtime_checkable
class ImagePromptEncoder(Protocol):
    """A vision-language model's encoder: the prompt's ids (each image as its placeholder
    tokens, so length limits count image features, as TGI) and its images in order.

    Raises ``ValidationError`` for a bad image (TGI's image messages).
    """

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Sequence[int]: ...

    def encode_with_images(
        self, text: str, *, add_special_tokens: bool = True
    ) -> tuple[Sequence[int], tuple[ImageInput, ...]]: ...


class GenerateLike(Protocol):
    """What validation reads from a request: its text, parameters and special-token flag."""

    @property
    def inputs(self) -> str: ...

    @property
    def parameters(self) -> GenerateParameters: ...

    @property
    def add_special_tokens(self) -> bool: ...


class GenerateInput(msgspec.Struct, frozen=True, kw_only=True):
    """A generate request built by the server (from a chat, completion or vertex request).

    Unlike a decoded ``GenerateRequest`` it can turn ``add_special_tokens`` off (chat
    prompts are already templated with their special tokens).
    """

    inputs: str
    parameters: GenerateParameters = GenerateParameters()
    add_special_tokens: bool = True


class ValidRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A validated request: everything the server and the engine need, defaults resolved.

    ``input_ids`` is the tokenized prompt after truncation (the last ``truncate`` tokens).
    ``max_new_tokens`` is the full target; ``max_new_tokens_chunk`` is the part scheduled at
    once (at most ``max_generation_chunk``), the value TGI checks against
    ``max_total_tokens`` and reports in metrics. ``sampling.do_sample`` is the final
    decision. ``seed`` is the seed to report (``None`` when greedy, as TGI's ``details``);
    ``seed_was_set`` tells whether the client chose it. ``best_of`` is 1 unless the client
    asked for more sequences.
    """

    inputs: str
    input_ids: tuple[int, ...]
    input_length: int
    add_special_tokens: bool
    truncate: int | None
    max_new_tokens: int
    max_new_tokens_chunk: int
    sampling: SamplingParams
    stop_sequences: tuple[str, ...]
    best_of: int
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    top_n_tokens: int
    seed: int | None
    seed_was_set: bool
    adapter_id: str | None
    watermark: bool
    images: tuple[ImageInput, ...] = ()
    # decoder_input_details and --enable-prefill-logprobs: without the flag, the details'
    # prefill is empty (TGI-Gaudi's behaviour).
    prefill_logprobs: bool = False

    def to_generation_request(
        self, request_id: int, *, ignore_eos: bool = False
    ) -> GenerationRequest:
        """The engine's message for this request (prompt logprobs iff ``prefill_logprobs``)."""
        return GenerationRequest(
            request_id=request_id,
            prompt_ids=self.input_ids,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling,
            stop_sequences=self.stop_sequences,
            ignore_eos=ignore_eos,
            prompt_logprobs=self.prefill_logprobs,
            adapter_id=self.adapter_id,
            images=self.images,
        )

    def with_random_seed(self) -> ValidRequest:
        """A copy with a fresh random seed: each extra sequence of a ``best_of`` request
        samples independently (TGI validates each of them separately)."""
        seed = random_seed()
        sampling = msgspec.structs.replace(self.sampling, seed=seed)
        reported = seed if sampling.do_sample else None
        return msgspec.structs.replace(self, sampling=sampling, seed=reported)


def random_seed() -> int:
    """A random u64, TGI's seed for a request that did not set one (from ``secrets``: a
    Mersenne Twister's outputs would let one client predict the others' seeds)."""
    return secrets.randbits(64)


def validate_generate(
    request: GenerateLike,
    limits: ValidationLimits,
    encoder: TextEncoder,
    *,
    stream: bool,
    default_return_full_text: bool = False,
) -> ValidRequest:
    """Validate ``request`` as TGI's router does and resolve every default.

    Args:
        request: the decoded request (or a ``GenerateInput`` built by the server).
        limits: the server's limits (``--max-best-of``, ``--max-input-tokens``, ...).
        encoder: the tokenizer.
        stream: whether the answer is streamed (``best_of`` and ``decoder_input_details``
            are refused on streams).
        default_return_full_text: the value of an unset ``return_full_text`` (false on
            ``/generate``; true on ``POST /`` for text-generation models).

    Raises:
        ValidationError: the first rule the request breaks, with TGI's message.
    """
    params = request.parameters
    best_of = _check_best_of(params, limits, stream=stream)
    sampling = _sampling_params(params, best_of, limits)
    if params.max_new_tokens == 0:
        raise ValidationError("`max_new_tokens` must be strictly positive")
    if params.adapter_id is not None and params.adapter_id not in limits.adapter_ids:
        loaded = ", ".join(limits.adapter_ids) or "none"
        raise ValidationError(
            f"`adapter_id` {params.adapter_id!r} is not a loaded LoRA adapter (loaded: {loaded})"
        )
    num_stops = len(params.stop)
    if num_stops > limits.max_stop_sequences:
        msg = (
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {num_stops}"
        )
        raise ValidationError(msg)
    longest_stop = max(map(len, params.stop), default=0)
    if longest_stop > MAX_STOP_SEQUENCE_CHARS:
        msg = (
            f"`stop` sequences must have at most {MAX_STOP_SEQUENCE_CHARS} characters. "
            f"Given: {longest_stop}"
        )
        raise ValidationError(msg)
    if params.seed is not None and best_of > 1:
        raise ValidationError("`seed` must not be set when `best_of` > 1")
    top_n_tokens = params.top_n_tokens or 0
    if top_n_tokens > limits.max_top_n_tokens:
        msg = f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n_tokens}"
        raise ValidationError(msg)
    if not request.inputs:
        raise ValidationError("`inputs` cannot be empty")
    truncate = params.truncate
    if truncate is not None and not 0 < truncate <= limits.max_input_tokens:
        msg = (
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. "
            f"Given: {truncate}"
        )
        raise ValidationError(msg)
    input_ids, images = _tokenize(request, encoder, truncate)
    max_new_tokens, chunk = _check_lengths(len(input_ids), params.max_new_tokens, limits)
    grammar = None
    if params.grammar is not None:
        grammar = compile_grammar(
            params.grammar, disable_grammar_support=limits.disable_grammar_support
        )

    seed = params.seed if params.seed is not None else random_seed()
    sampling = msgspec.structs.replace(
        sampling, seed=seed, top_n_tokens=top_n_tokens, grammar=grammar
    )
    return_full_text = params.return_full_text
    return ValidRequest(
        inputs=request.inputs,
        input_ids=input_ids,
        input_length=len(input_ids),
        add_special_tokens=request.add_special_tokens,
        truncate=truncate,
        max_new_tokens=max_new_tokens,
        max_new_tokens_chunk=chunk,
        sampling=sampling,
        stop_sequences=params.stop,
        best_of=max(best_of, 1),
        details=params.details,
        decoder_input_details=params.decoder_input_details,
        return_full_text=default_return_full_text if return_full_text is None else return_full_text,
        top_n_tokens=top_n_tokens,
        seed=seed if sampling.do_sample else None,
        seed_was_set=params.seed is not None,
        adapter_id=params.adapter_id,
        watermark=params.watermark,
        images=images,
        prefill_logprobs=params.decoder_input_details and limits.enable_prefill_logprobs,
    )


def _check_best_of(params: GenerateParameters, limits: ValidationLimits, *, stream: bool) -> int:
    # The route-level checks TGI runs before validation proper.
    best_of = 1 if params.best_of is None else params.best_of
    if stream:
        if best_of != 1:
            raise ValidationError("`best_of` != 1 is not supported when streaming tokens")
        if params.decoder_input_details:
            msg = "`decoder_input_details` == true is not supported when streaming tokens"
            raise ValidationError(msg)
    elif best_of > 1:
        if limits.max_best_of == 1:
            raise ValidationError("`best_of` != 1 is not allowed for this endpoint")
        if best_of > limits.max_best_of:
            msg = f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}"
            raise ValidationError(msg)
    return best_of


def _sampling_params(
    params: GenerateParameters, best_of: int, limits: ValidationLimits
) -> SamplingParams:
    """Rules 1-7: sampling parameters, their ranges and the sampling decision."""
    any_warper_set = any(
        value is not None
        for value in (params.temperature, params.top_k, params.top_p, params.typical_p)
    )
    if best_of > 1 and not (params.do_sample or any_warper_set):
        raise ValidationError("you must use sampling when `best_of` is > 1")
    # Ranges are checked on the float32 values the runner computes with (TGI parses f32).
    temperature = 1.0 if params.temperature is None else params.temperature
    if _float32("temperature", temperature) <= 0.0:
        raise ValidationError("`temperature` must be strictly positive")
    repetition_penalty = 1.0 if params.repetition_penalty is None else params.repetition_penalty
    if _float32("repetition_penalty", repetition_penalty) <= 0.0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    frequency_penalty = 0.0 if params.frequency_penalty is None else params.frequency_penalty
    if not -2.0 <= _float32("frequency_penalty", frequency_penalty) <= 2.0:
        raise ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    top_p = 1.0 if params.top_p is None else params.top_p
    if params.top_p is not None and not 0.0 < _float32("top_p", top_p) < 1.0:
        raise ValidationError("`top_p` must be > 0.0 and < 1.0")
    typical_p = 1.0 if params.typical_p is None else params.typical_p
    if params.typical_p is not None and not 0.0 < _float32("typical_p", typical_p) < 1.0:
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    top_k = 0 if params.top_k is None else params.top_k
    if params.top_k is not None and top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    # The model samples when asked to or when any warper changes the distribution;
    # otherwise it is greedy whatever the other values.
    do_sample = params.do_sample or (
        temperature != 1.0 or top_k != 0 or top_p < 1.0 or typical_p < 1.0
    )
    return SamplingParams(
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        watermark=params.watermark,
    )


def _float32(name: str, value: float) -> float:
    """``value`` as the runner's float32 sees it.

    A value that overflows float32 (1e39) would turn scores into inf and NaN, so it is
    refused here; one that underflows (1e-50) becomes 0.0 and meets the range checks that
    follow (TGI's "strictly positive" rules).
    """
    try:
        value32: float = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        value32 = math.inf
    if not math.isfinite(value32):
        raise ValidationError(f"`{name}` must be a finite float32 number. Given: {value}")
    return value32


def _tokenize(
    request: GenerateLike, encoder: TextEncoder, truncate: int | None
) -> tuple[tuple[int, ...], tuple[ImageInput, ...]]:
    """Rule 14: tokenize (images read here), then keep the last ``truncate`` tokens."""
    images: tuple[ImageInput, ...] = ()
    special = request.add_special_tokens
    try:
        if isinstance(encoder, ImagePromptEncoder):
            encoded, images = encoder.encode_with_images(request.inputs, add_special_tokens=special)
            ids = tuple(encoded)
        else:
            ids = tuple(encoder.encode(request.inputs, add_special_tokens=special))
    except ValidationError:
        raise  # an image error, already in TGI's words
    except Exception as exc:  # any tokenizer failure is the client's input, as in TGI
        raise ValidationError(f"tokenizer error {exc}") from exc
    if not ids:
        # Not a TGI rule (TGI would send an empty prompt to the model): a prompt with no
        # token cannot be prefilled, so refuse it the way TGI refuses empty text.
        raise ValidationError("`inputs` cannot be empty")
    if truncate is not None and len(ids) > truncate:
        if images:
            # Cutting could split an image's placeholders from its features (TGI's Python
            # side re-tokenizes; here the runner would fail the whole batch): refuse instead.
            raise ValidationError(
                f"`truncate` must not cut a prompt with images: it has {len(ids)} tokens "
                f"(images included). Given: {truncate}"
            )
        ids = ids[len(ids) - truncate :]
    return ids, images


def _check_lengths(
    input_length: int, max_new_tokens: int | None, limits: ValidationLimits
) -> tuple[int, int]:
    """Rules 15-16: total length (with the chunked max_new_tokens), then input length.

    Returns the full max_new_tokens target and the chunk scheduled at once.
    """
    if max_new_tokens is None:
        max_new_tokens = max(limits.max_total_tokens - input_length, 0)
    chunk = min(max_new_tokens, limits.max_generation_chunk)
    if input_length + chunk > limits.max_total_tokens:
        msg = (
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {chunk} `max_new_tokens`"
        )
        raise ValidationError(msg)
    if input_length > limits.max_input_tokens:
        msg = (
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
        )
        raise ValidationError(msg)
    return max_new_tokens, chunk
