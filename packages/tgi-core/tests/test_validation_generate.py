"""validate_generate: every TGI rule, its order, its exact message, and the resolved request."""

from __future__ import annotations

from typing import Any

import pytest

from tgi_core.api import GenerateParameters, GenerateRequest, GrammarType
from tgi_core.errors import ValidationError
from tgi_core.settings.slices import ValidationLimits
from tgi_core.testing import BYTE_BOS, ByteEncoder
from tgi_core.validation import GenerateInput, ValidRequest, validate_generate

LIMITS = ValidationLimits(
    max_best_of=2,
    max_stop_sequences=4,
    max_top_n_tokens=5,
    max_input_tokens=4095,
    max_total_tokens=4096,
    max_generation_chunk=1024,
    enable_prefill_logprobs=True,
    adapter_ids=("lora",),
)


def validate(
    inputs: str = "Hello",
    *,
    stream: bool = False,
    limits: ValidationLimits = LIMITS,
    **params: Any,
) -> ValidRequest:
    request = GenerateRequest(inputs=inputs, parameters=GenerateParameters(**params))
    return validate_generate(request, limits, ByteEncoder(), stream=stream)


def error_of(inputs: str = "Hello", **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as info:
        validate(inputs, **kwargs)
    assert info.value.status == 422
    assert info.value.error_type == "validation"
    assert info.value.message.startswith("Input validation error: ")
    return info.value.detail


# --- one test per rule, with TGI's message ----------------------------------------------


def test_best_of_needs_sampling() -> None:
    assert error_of(best_of=2) == "you must use sampling when `best_of` is > 1"
    # Setting any warper counts as sampling for this rule, even to its neutral value.
    assert validate(best_of=2, temperature=1.0).best_of == 2
    assert validate(best_of=2, do_sample=True).best_of == 2


def test_temperature_must_be_positive() -> None:
    assert error_of(temperature=0.0) == "`temperature` must be strictly positive"
    assert error_of(temperature=-1.5) == "`temperature` must be strictly positive"


def test_repetition_penalty_must_be_positive() -> None:
    assert error_of(repetition_penalty=0.0) == "`repetition_penalty` must be strictly positive"


@pytest.mark.parametrize("value", [-2.01, 2.5])
def test_frequency_penalty_range(value: float) -> None:
    assert error_of(frequency_penalty=value) == "`frequency_penalty` must be >= -2.0 and <= 2.0"


def test_frequency_penalty_bounds_are_inclusive() -> None:
    assert validate(frequency_penalty=-2.0).sampling.frequency_penalty == -2.0
    assert validate(frequency_penalty=2.0).sampling.frequency_penalty == 2.0


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1])
def test_top_p_open_interval(value: float) -> None:
    assert error_of(top_p=value) == "`top_p` must be > 0.0 and < 1.0"


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_typical_p_open_interval(value: float) -> None:
    assert error_of(typical_p=value) == "`typical_p` must be > 0.0 and < 1.0"


@pytest.mark.parametrize("value", [0, -3])
def test_top_k_must_be_positive(value: int) -> None:
    assert error_of(top_k=value) == "`top_k` must be strictly positive"


def test_max_new_tokens_zero() -> None:
    assert error_of(max_new_tokens=0) == "`max_new_tokens` must be strictly positive"


def test_too_many_stop_sequences() -> None:
    stops = ("a", "b", "c", "d", "e")
    assert error_of(stop=stops) == "`stop` supports up to 4 stop sequences. Given: 5"
    assert validate(stop=stops[:4]).stop_sequences == stops[:4]


def test_a_stop_sequence_longer_than_the_matched_tail_is_refused() -> None:
    assert list(validate(stop=["x" * 300]).stop_sequences) == ["x" * 300]
    message = error_of(stop=["ok", "x" * 400_000])
    assert message == "`stop` sequences must have at most 300 characters. Given: 400000"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 1e39, "`temperature` must be a finite float32 number. Given: 1e+39"),
        ("temperature", 1e-50, "`temperature` must be strictly positive"),
        ("repetition_penalty", 1e-50, "`repetition_penalty` must be strictly positive"),
        (
            "repetition_penalty",
            1e39,
            "`repetition_penalty` must be a finite float32 number. Given: 1e+39",
        ),
        (
            "repetition_penalty",
            float("inf"),
            "`repetition_penalty` must be a finite float32 number. Given: inf",
        ),
        ("top_p", 1e-50, "`top_p` must be > 0.0 and < 1.0"),
        ("top_p", 1.0 - 1e-12, "`top_p` must be > 0.0 and < 1.0"),  # 1.0 in float32
        ("typical_p", 1e-50, "`typical_p` must be > 0.0 and < 1.0"),
        (
            "frequency_penalty",
            float("-inf"),
            "`frequency_penalty` must be a finite float32 number. Given: -inf",
        ),
    ],
)
def test_values_float32_cannot_hold_are_refused(field: str, value: float, message: str) -> None:
    # The runner computes in float32: these would become inf or 0 there, and NaN scores.
    assert error_of(**{field: value}) == message


def test_small_values_float32_can_hold_are_kept_as_given() -> None:
    sampling = validate(temperature=1e-40, repetition_penalty=3e38, top_p=1e-30).sampling
    assert (sampling.temperature, sampling.repetition_penalty, sampling.top_p) == (
        1e-40,
        3e38,
        1e-30,
    )


def test_seed_with_best_of() -> None:
    message = error_of(best_of=2, do_sample=True, seed=7)
    assert message == "`seed` must not be set when `best_of` > 1"


def test_top_n_tokens_limit() -> None:
    assert error_of(top_n_tokens=6) == "`top_n_tokens` must be >= 0 and <= 5. Given: 6"
    assert validate(top_n_tokens=5).top_n_tokens == 5


def test_empty_inputs() -> None:
    assert error_of("") == "`inputs` cannot be empty"


@pytest.mark.parametrize("value", [0, 4096])
def test_truncate_range(value: int) -> None:
    message = error_of(truncate=value)
    assert message == f"`truncate` must be strictly positive and less than 4095. Given: {value}"


def test_total_length_uses_the_chunked_max_new_tokens() -> None:
    # TGI's documented example: 4000 prompt tokens + 200 new tokens > 4096.
    inputs = "a" * 3999  # + BOS = 4000 tokens
    message = error_of(inputs, max_new_tokens=200)
    assert message == (
        "`inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 200 `max_new_tokens`"
    )
    # A huge target is checked as its first chunk (1024), and remembered in full.
    message = error_of("a" * 3199, max_new_tokens=100_000)
    assert message.endswith("Given: 3200 `inputs` tokens and 1024 `max_new_tokens`")
    valid = validate("a" * 99, max_new_tokens=100_000)
    assert (valid.max_new_tokens, valid.max_new_tokens_chunk) == (100_000, 1024)


def test_total_length_is_checked_before_input_length() -> None:
    limits = ValidationLimits(max_input_tokens=10, max_total_tokens=20)
    message = error_of("a" * 14, limits=limits, max_new_tokens=10)
    assert message.startswith("`inputs` tokens + `max_new_tokens` must be <= 20. Given: 15")
    assert error_of("a" * 14, limits=limits, max_new_tokens=5) == (
        "`inputs` must have less than 10 tokens. Given: 15"
    )


def test_grammar_is_checked_last_and_reaches_the_sampling_params() -> None:
    grammar = GrammarType(type="regex", value="[0-9]+")
    assert validate(grammar=grammar).sampling.grammar == "[0-9]+"
    assert validate().sampling.grammar is None
    disabled = ValidationLimits(disable_grammar_support=True)
    assert error_of(grammar=grammar, limits=disabled) == "grammar is not supported"
    # Length errors come first, as in TGI (grammar is rule 17).
    message = error_of("a" * 5000, grammar=grammar, limits=disabled)
    assert message.startswith("`inputs` tokens + `max_new_tokens`")


# --- route-level rules: best_of and streams ---------------------------------------------


def test_best_of_above_the_limit() -> None:
    message = error_of(best_of=3, do_sample=True)
    assert message == "`best_of` must be > 0 and <= 2. Given: 3"


def test_best_of_disabled_endpoint() -> None:
    limits = ValidationLimits(max_best_of=1)
    message = error_of(best_of=2, do_sample=True, limits=limits)
    assert message == "`best_of` != 1 is not allowed for this endpoint"


def test_streams_refuse_best_of_and_prefill_details() -> None:
    assert error_of(best_of=2, do_sample=True, stream=True) == (
        "`best_of` != 1 is not supported when streaming tokens"
    )
    assert error_of(best_of=0, stream=True) == (
        "`best_of` != 1 is not supported when streaming tokens"
    )
    assert error_of(decoder_input_details=True, stream=True) == (
        "`decoder_input_details` == true is not supported when streaming tokens"
    )
    assert validate(decoder_input_details=True).decoder_input_details


def test_rules_run_in_tgi_order() -> None:
    # Every rule is broken at first; fixing one at a time reveals the next, in TGI's order.
    limits = ValidationLimits(max_input_tokens=10, max_total_tokens=20)
    params: dict[str, Any] = {
        "best_of": 2,
        "seed": 1,
        "repetition_penalty": 0.0,
        "frequency_penalty": 3.0,
        "max_new_tokens": 0,
        "stop": ("s",) * 5,
        "top_n_tokens": 9,
        "truncate": 0,
        "grammar": GrammarType(type="json", value={"type": "object"}),
    }
    assert error_of("", limits=limits, **params) == "you must use sampling when `best_of` is > 1"
    # Any warper counts as sampling for rule 1, so they are broken only from here on.
    params.update(do_sample=True, temperature=0.0, top_p=1.0, typical_p=1.0, top_k=0)
    fixes: list[tuple[str, Any, str]] = [
        ("temperature", 0.5, "`temperature`"),
        ("repetition_penalty", 1.1, "`repetition_penalty`"),
        ("frequency_penalty", 0.0, "`frequency_penalty`"),
        ("top_p", 0.9, "`top_p`"),
        ("typical_p", 0.9, "`typical_p`"),
        ("top_k", 3, "`top_k`"),
        ("max_new_tokens", 2000, "`max_new_tokens`"),
        ("stop", (), "`stop`"),
        ("seed", None, "`seed`"),
        ("top_n_tokens", 1, "`top_n_tokens`"),
    ]
    for field, good_value, expected_start in fixes:
        assert error_of("", limits=limits, **params).startswith(expected_start)
        params[field] = good_value
    assert error_of("", limits=limits, **params) == "`inputs` cannot be empty"
    inputs = "a" * 14  # 15 tokens
    assert error_of(inputs, limits=limits, **params).startswith("`truncate`")
    params["truncate"] = None
    assert error_of(inputs, limits=limits, **params).startswith("`inputs` tokens + ")
    params["max_new_tokens"] = 5
    assert error_of(inputs, limits=limits, **params).startswith("`inputs` must have less than")
    assert error_of("a" * 5, limits=limits, **params) == (
        "grammar is not valid: Grammar must have a 'properties' field"
    )
    params["grammar"] = None
    assert validate("a" * 5, limits=limits, **params).best_of == 2


# --- the resolved request ---------------------------------------------------------------


def test_defaults_are_resolved() -> None:
    valid = validate("Hi", max_new_tokens=10)
    assert valid.input_ids == (BYTE_BOS, ord("H"), ord("i"))
    assert valid.input_length == 3
    assert valid.max_new_tokens == 10
    assert valid.best_of == 1
    assert not valid.sampling.do_sample
    assert valid.seed is None  # greedy requests report no seed
    assert not valid.seed_was_set
    assert valid.sampling.temperature == 1.0
    assert valid.sampling.top_k == 0
    assert valid.sampling.top_p == 1.0
    assert valid.sampling.repetition_penalty == 1.0
    assert valid.return_full_text is False
    assert valid.details is False


def test_max_new_tokens_defaults_to_the_remaining_budget() -> None:
    valid = validate("a" * 99)  # 100 tokens
    assert valid.max_new_tokens == 4096 - 100
    assert valid.max_new_tokens_chunk == 1024


def test_truncate_keeps_the_last_tokens() -> None:
    valid = validate("abcdef", truncate=3, max_new_tokens=1)
    assert valid.input_ids == tuple(b"def")
    assert valid.input_length == 3
    # Truncation lets a long prompt through the length checks.
    limits = ValidationLimits(max_input_tokens=10, max_total_tokens=20)
    valid = validate("a" * 50, truncate=10, max_new_tokens=10, limits=limits)
    assert valid.input_length == 10


def test_sampling_decision() -> None:
    assert validate(do_sample=True).sampling.do_sample
    assert validate(temperature=0.7).sampling.do_sample
    assert validate(top_k=5).sampling.do_sample
    assert validate(top_p=0.9).sampling.do_sample
    assert validate(typical_p=0.9).sampling.do_sample
    # Neutral values do not sample.
    assert not validate(temperature=1.0).sampling.do_sample
    assert not validate(repetition_penalty=1.3, watermark=True).sampling.do_sample


def test_seed_is_random_when_sampling_without_one() -> None:
    seeds = {validate(do_sample=True).seed for _ in range(8)}
    assert None not in seeds
    assert len(seeds) > 1
    assert all(0 <= seed < 2**64 for seed in seeds if seed is not None)
    chosen = validate(do_sample=True, seed=42)
    assert chosen.seed == 42
    assert chosen.sampling.seed == 42
    assert chosen.seed_was_set


def test_return_full_text_default_is_per_route() -> None:
    request = GenerateRequest(inputs="x", parameters=GenerateParameters())
    valid = validate_generate(
        request, LIMITS, ByteEncoder(), stream=False, default_return_full_text=True
    )
    assert valid.return_full_text is True
    assert validate(return_full_text=False).return_full_text is False


def test_add_special_tokens_follows_the_request() -> None:
    request = GenerateInput(inputs="Hi", add_special_tokens=False)
    valid = validate_generate(request, LIMITS, ByteEncoder(), stream=True)
    assert valid.input_ids == tuple(b"Hi")
    assert not valid.add_special_tokens


def test_an_adapter_that_is_not_loaded_is_refused() -> None:
    assert validate(adapter_id="lora").adapter_id == "lora"
    assert error_of(adapter_id="other") == (
        "`adapter_id` 'other' is not a loaded LoRA adapter (loaded: lora)"
    )
    bare = ValidationLimits()
    assert error_of(adapter_id="lora", limits=bare) == (
        "`adapter_id` 'lora' is not a loaded LoRA adapter (loaded: none)"
    )


def test_tokenizer_errors_are_validation_errors() -> None:
    message = error_of("\ud800")  # a lone surrogate cannot be UTF-8 encoded
    assert message.startswith("tokenizer error ")


def test_generation_request_carries_everything_the_engine_needs() -> None:
    valid = validate(
        "Hi",
        do_sample=True,
        seed=3,
        top_n_tokens=2,
        stop=("x",),
        max_new_tokens=7,
        decoder_input_details=True,
        adapter_id="lora",
        watermark=True,
    )
    engine_request = valid.to_generation_request(11)
    assert engine_request.request_id == 11
    assert engine_request.prompt_ids == valid.input_ids
    assert engine_request.max_new_tokens == 7
    assert engine_request.stop_sequences == ("x",)
    assert engine_request.prompt_logprobs
    assert engine_request.adapter_id == "lora"
    assert engine_request.sampling.seed == 3
    assert engine_request.sampling.top_n_tokens == 2
    assert engine_request.sampling.watermark
    assert not engine_request.ignore_eos


def test_best_of_sequences_get_their_own_seeds() -> None:
    valid = validate(best_of=2, do_sample=True, details=True)
    other = valid.with_random_seed()
    assert other.seed is not None
    assert other.seed == other.sampling.seed
    assert other.sampling.seed != valid.sampling.seed
    assert other.input_ids == valid.input_ids
