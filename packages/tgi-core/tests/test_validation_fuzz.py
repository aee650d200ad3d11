"""Fuzzing: whatever a client sends, decoding + validation fail only with TGI's errors.

Each route's server-side pipeline (decode -> map -> validate -> engine request) runs on
random bytes, random JSON and structurally plausible but wrong bodies; the only exceptions
allowed out are ``BodyError`` (plain-text 400/422) and ``TGIError`` subclasses.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tgi_core.api import (
    BodyError,
    ChatRequest,
    CompatGenerateRequest,
    CompletionRequest,
    GenerateRequest,
    decode_body,
    decode_invocations,
    decode_vertex,
    encode_json,
)
from tgi_core.errors import TGIError
from tgi_core.settings.slices import ValidationLimits
from tgi_core.testing import ByteEncoder
from tgi_core.validation import (
    GenerateLike,
    chat_to_generate,
    completion_to_generate,
    messages_for_template,
    select_tools,
    validate_generate,
    vertex_to_generate,
)

LIMITS = ValidationLimits(
    max_input_tokens=64, max_total_tokens=128, max_client_batch_size=2, max_generation_chunk=32
)
FUZZ = settings(max_examples=150, deadline=None)


# --- each route's pipeline, as the server runs it ------------------------------------------


def _validate(request: GenerateLike, *, stream: bool, full_text: bool = False) -> None:
    valid = validate_generate(
        request, LIMITS, ByteEncoder(), stream=stream, default_return_full_text=full_text
    )
    engine_request = valid.to_generation_request(1)
    assert engine_request.prompt_ids == valid.input_ids
    assert 0 < valid.input_length <= LIMITS.max_input_tokens
    assert valid.input_length + valid.max_new_tokens_chunk <= LIMITS.max_total_tokens
    encode_json(engine_request)


def generate_route(data: bytes) -> None:
    _validate(decode_body(data, GenerateRequest), stream=False)


def generate_stream_route(data: bytes) -> None:
    _validate(decode_body(data, GenerateRequest), stream=True)


def compat_route(data: bytes) -> None:
    request = decode_body(data, CompatGenerateRequest)
    _validate(request, stream=request.stream, full_text=True)


def _chat(request: ChatRequest) -> None:
    select_tools(request)
    messages = messages_for_template(request)
    prompt = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"
    _validate(chat_to_generate(request, prompt), stream=request.stream)


def _completion(request: CompletionRequest) -> None:
    for item in completion_to_generate(request, LIMITS):
        _validate(item, stream=request.stream)


def chat_route(data: bytes) -> None:
    _chat(decode_body(data, ChatRequest))


def completions_route(data: bytes) -> None:
    _completion(decode_body(data, CompletionRequest))


def invocations_route(data: bytes) -> None:
    request = decode_invocations(data)
    if isinstance(request, CompatGenerateRequest):
        _validate(request, stream=request.stream, full_text=True)
    elif isinstance(request, ChatRequest):
        _chat(request)
    else:
        _completion(request)


def vertex_route(data: bytes) -> None:
    for item in vertex_to_generate(decode_vertex(data)):
        if isinstance(item, ChatRequest):
            _chat(item)
        else:
            _validate(item, stream=False)


ROUTES: list[Callable[[bytes], None]] = [
    generate_route,
    generate_stream_route,
    compat_route,
    chat_route,
    completions_route,
    invocations_route,
    vertex_route,
]


def run_every_route(data: bytes) -> None:
    for route in ROUTES:
        with contextlib.suppress(BodyError, TGIError):
            route(data)


# --- strategies ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.integers(min_value=-3, max_value=300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-3, max_value=3)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
short_text = st.text(max_size=40)
text_lists = st.lists(st.text(max_size=4), max_size=6)
grammars = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["json", "json_object", "regex", "json_schema", "xml"]),
        "value": json_values | st.fixed_dictionaries({"schema": json_values}),
    },
)
field_values = scalars | text_lists | grammars | json_values

GENERATE_FIELDS = [
    "best_of",
    "temperature",
    "repetition_penalty",
    "frequency_penalty",
    "top_k",
    "top_p",
    "typical_p",
    "do_sample",
    "max_new_tokens",
    "return_full_text",
    "stop",
    "truncate",
    "watermark",
    "details",
    "decoder_input_details",
    "seed",
    "top_n_tokens",
    "grammar",
    "adapter_id",
]
CHAT_FIELDS = [
    "model",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "presence_penalty",
    "stop",
    "stream",
    "seed",
    "temperature",
    "top_p",
    "tool_prompt",
    "response_format",
    "stream_options",
]
COMPLETION_FIELDS = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "stream",
    "seed",
    "suffix",
    "repetition_penalty",
    "frequency_penalty",
    "stop",
]


def _object(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=dict.fromkeys(fields, field_values))


generate_bodies = st.fixed_dictionaries(
    {"inputs": short_text | json_values},
    optional={"parameters": _object(GENERATE_FIELDS) | json_values, "stream": field_values},
)
chunks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "audio"])},
    optional={"text": short_text | json_values, "image_url": json_values},
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(max_size=3), "type": st.just("function")},
        optional={"function": st.fixed_dictionaries({"name": short_text}, optional={})},
    ),
    max_size=2,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]) | json_values},
        optional={
            "content": short_text | st.lists(chunks, max_size=3) | json_values,
            "tool_calls": tool_calls | json_values,
            "tool_call_id": short_text,
        },
    ),
    max_size=3,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["f", "g", "no_tool"])},
                optional={"parameters": json_values, "description": short_text},
            ),
        }
    ),
    max_size=2,
)
tool_choices = st.sampled_from(["auto", "none", "required", "f", "zzz"]) | st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": short_text})}
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        **dict.fromkeys(CHAT_FIELDS, field_values),
        "tools": tools | json_values,
        "tool_choice": tool_choices | json_values,
    },
)
completion_bodies = st.fixed_dictionaries(
    {"prompt": short_text | st.lists(short_text, max_size=3) | json_values},
    optional=dict.fromkeys(COMPLETION_FIELDS, field_values),
)
vertex_bodies = st.fixed_dictionaries(
    {"instances": st.lists(generate_bodies | chat_bodies | json_values, max_size=2)}
)


# Well-typed values, so that bodies get past decoding and exercise the validation rules.
small_floats = st.floats(min_value=-3, max_value=3)
small_ints = st.integers(min_value=-2, max_value=200)
TYPED_GENERATE = {
    "best_of": st.integers(min_value=0, max_value=3),
    "temperature": small_floats,
    "repetition_penalty": small_floats,
    "frequency_penalty": small_floats,
    "top_k": small_ints,
    "top_p": small_floats,
    "typical_p": small_floats,
    "do_sample": st.booleans(),
    "max_new_tokens": st.integers(min_value=0, max_value=2000),
    "stop": text_lists,
    "truncate": st.integers(min_value=0, max_value=100),
    "decoder_input_details": st.booleans(),
    "seed": st.integers(min_value=0, max_value=2**64 - 1),
    "top_n_tokens": st.integers(min_value=0, max_value=8),
}
TYPED_CHAT = {
    "model": st.sampled_from(["tgi", "lora"]),
    "frequency_penalty": small_floats,
    "presence_penalty": small_floats,
    "top_logprobs": st.integers(min_value=0, max_value=8),
    "max_tokens": st.integers(min_value=0, max_value=300),
    "stop": short_text | text_lists,
    "stream": st.booleans(),
    "seed": st.integers(min_value=0, max_value=2**64 - 1),
    "temperature": small_floats,
    "top_p": small_floats,
    "tools": tools,
    "tool_choice": tool_choices,
    "response_format": grammars,
}
typed_generate_bodies = st.fixed_dictionaries(
    {"inputs": short_text},
    optional={"parameters": st.fixed_dictionaries({}, optional=TYPED_GENERATE)},
)
typed_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"])},
        optional={
            "content": short_text
            | st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": short_text})
                | st.fixed_dictionaries(
                    {
                        "type": st.just("image_url"),
                        "image_url": st.fixed_dictionaries({"url": short_text}),
                    }
                ),
                max_size=3,
            )
        },
    ),
    max_size=3,
)
typed_chat_bodies = st.fixed_dictionaries({"messages": typed_messages}, optional=TYPED_CHAT)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- the properties --------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=80))
def test_random_bytes(data: bytes) -> None:
    run_every_route(data)


@FUZZ
@given(json_values)
def test_random_json(value: Any) -> None:
    run_every_route(_encode(value))


@FUZZ
@given(typed_generate_bodies | generate_bodies)
def test_plausible_generate_bodies(body: dict[str, Any]) -> None:
    run_every_route(_encode(body))


@FUZZ
@given(typed_chat_bodies | chat_bodies)
def test_plausible_chat_bodies(body: dict[str, Any]) -> None:
    run_every_route(_encode(body))


@FUZZ
@given(completion_bodies)
def test_plausible_completion_bodies(body: dict[str, Any]) -> None:
    run_every_route(_encode(body))


@FUZZ
@given(vertex_bodies)
def test_plausible_vertex_bodies(body: dict[str, Any]) -> None:
    run_every_route(_encode(body))


def test_the_pipelines_accept_good_requests() -> None:
    # The fuzz properties would pass vacuously if every body were refused.
    generate_route(b'{"inputs":"Hello","parameters":{"max_new_tokens":4}}')
    compat_route(b'{"inputs":"Hello","stream":true,"parameters":{"max_new_tokens":4}}')
    chat_route(b'{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4}')
    completions_route(b'{"prompt":["a","b"],"max_tokens":4}')
    invocations_route(b'{"prompt":"a","max_tokens":4}')
    vertex_route(b'{"instances":[{"inputs":"a","parameters":{"max_new_tokens":2}}]}')
