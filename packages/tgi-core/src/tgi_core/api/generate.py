"""TGI's native generation API: ``/generate``, ``/generate_stream``, ``POST /``, ``/tokenize``.

Request types decode with TGI's field names, defaults and optionality (serde's
``#[serde(default)]`` becomes a Python default; a Rust ``Option`` becomes ``| None``).
Response types encode to TGI's exact JSON: which keys are omitted and which are ``null``
is part of the contract clients parse, so it is encoded by field defaults here
(``omit_defaults`` drops a field only when it has a default and holds it; fields that must
always appear, even as ``null``, have no default).

Validation rules (ranges, limits, tokenization) live in ``tgi_core.validation``; the
OpenAI surface lives in ``tgi_core.api.chat`` and ``tgi_core.api.completions``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from tgi_core.api.common import I32, U32, U64, check_u64, f32
from tgi_core.contract import FinishReason

__all__ = [
    "BestOfSequence",
    "CompatGenerateRequest",
    "Details",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "GrammarType",
    "PrefillToken",
    "StreamDetails",
    "StreamResponse",
    "Token",
]


class GrammarType(msgspec.Struct, frozen=True, kw_only=True):
    """A grammar constraint: ``{"type": ..., "value": ...}`` (serde's adjacently tagged enum).

    ``json`` (alias ``json_object``): ``value`` is a JSON Schema object or a string holding
    one; ``regex``: ``value`` is a regular expression string; ``json_schema``: ``value`` is
    ``{"name"?: str, "schema": {...}}`` (OpenAI's ``response_format`` shape).
    """

    type: Literal["json", "json_object", "regex", "json_schema"]
    value: Any

    def __post_init__(self) -> None:
        if self.type == "regex" and not isinstance(self.value, str):
            msg = "invalid type for a `regex` grammar value, expected a string"
            raise ValueError(msg)
        if self.type == "json_schema":
            value = self.value
            if not isinstance(value, dict) or "schema" not in value:
                msg = "missing field `schema` in a `json_schema` grammar value"
                raise ValueError(msg)
            if not isinstance(value.get("name"), str | None):
                msg = "invalid type for `name` in a `json_schema` grammar value, expected a string"
                raise ValueError(msg)


class GenerateParameters(msgspec.Struct, frozen=True, kw_only=True):
    """Generation parameters (``parameters`` of a GenerateRequest); every field is optional.

    ``None`` means "use the server's rule": temperature 1.0, repetition_penalty 1.0,
    frequency_penalty 0.0, top_k/top_p/typical_p disabled, best_of 1, top_n_tokens 0, a
    random seed, ``max_new_tokens = max_total_tokens - input_length``, and
    ``return_full_text`` false (``/generate``) or true (``POST /`` on a text-generation
    model). ``details`` and ``decoder_input_details`` default to false (TGI's schema text
    says true; serde's actual default is false).
    """

    best_of: U64 | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: I32 | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: U32 | None = None
    return_full_text: bool | None = None
    stop: tuple[str, ...] = ()
    truncate: U64 | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: U64 | None = None
    top_n_tokens: U32 | None = None
    grammar: GrammarType | None = None
    adapter_id: str | None = None

    def __post_init__(self) -> None:
        check_u64("best_of", self.best_of)
        check_u64("truncate", self.truncate)
        check_u64("seed", self.seed)


def _omitted_parameters() -> GenerateParameters:
    # TGI's `default_parameters()`: when the whole `parameters` object is missing, the
    # router samples (do_sample = true); an explicit `{}` keeps do_sample = false.
    return GenerateParameters(do_sample=True)


class GenerateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``/generate``, ``/generate_stream`` and ``/tokenize``.

    ``add_special_tokens`` is not part of the wire format (serde ``skip``): it is always
    true for these routes, false for chat (see ``tgi_core.validation.GenerateInput``).
    """

    inputs: str
    parameters: GenerateParameters = msgspec.field(default_factory=_omitted_parameters)

    @property
    def add_special_tokens(self) -> bool:
        return True


class CompatGenerateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``POST /``: a GenerateRequest plus ``stream`` (default false)."""

    inputs: str
    parameters: GenerateParameters = msgspec.field(default_factory=_omitted_parameters)
    stream: bool = False

    @property
    def add_special_tokens(self) -> bool:
        return True


class PrefillToken(msgspec.Struct, gc=False):
    """A prompt token with its logprob (``null`` for the first token, which has none)."""

    id: int
    text: str
    logprob: float | None

    def __post_init__(self) -> None:
        if self.logprob is not None:
            self.logprob = f32(self.logprob)


class Token(msgspec.Struct, gc=False):
    """A generated (or top-n candidate) token; ``special`` marks tokens like EOS."""

    id: int
    text: str
    logprob: float
    special: bool

    def __post_init__(self) -> None:
        self.logprob = f32(self.logprob)


class BestOfSequence(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One of the non-winning sequences of a ``best_of`` > 1 request.

    ``top_tokens`` is omitted when empty.
    """

    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] = []


class Details(msgspec.Struct, omit_defaults=True, kw_only=True):
    """``details`` of a GenerateResponse.

    ``seed`` is ``null`` for greedy requests. ``best_of_sequences`` is omitted unless
    best_of > 1; ``top_tokens`` (one list per generated token) is omitted when empty.
    """

    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    best_of_sequences: list[BestOfSequence] | None = None
    top_tokens: list[list[Token]] = []


class GenerateResponse(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Answer of ``/generate`` (``POST /`` answers a one-element list of it).

    ``details`` is omitted unless the request asked for ``details`` or
    ``decoder_input_details``.
    """

    generated_text: str
    details: Details | None = None


class StreamDetails(msgspec.Struct, gc=False, kw_only=True):
    """``details`` of the last stream event (only when the request set ``details``)."""

    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One ``/generate_stream`` SSE event.

    ``index`` counts events from 1. ``generated_text`` and ``details`` are always present,
    ``null`` until the last event; ``top_tokens`` is omitted when empty.
    """

    index: int
    token: Token
    top_tokens: list[Token] = []
    generated_text: str | None
    details: StreamDetails | None
