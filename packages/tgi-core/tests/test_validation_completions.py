"""The completions and vertex mappings, with their route-level errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tgi_core.api import ChatRequest, CompletionRequest, decode_body, decode_vertex
from tgi_core.errors import (
    BatchSizeExceededError,
    SuffixNotSupportedError,
    VertexEmptyInstancesError,
)
from tgi_core.settings.slices import ValidationLimits
from tgi_core.testing import ByteEncoder
from tgi_core.validation import (
    GenerateInput,
    completion_to_generate,
    validate_generate,
    vertex_to_generate,
)


def completion(**fields: Any) -> CompletionRequest:
    body = {"prompt": "Once", **fields}
    return decode_body(json.dumps(body).encode(), CompletionRequest)


def test_each_prompt_becomes_a_generate_request() -> None:
    request = completion(
        prompt=["a", "b"],
        model="lora",
        max_tokens=5,
        temperature=0.3,
        top_p=0.8,
        seed=4,
        repetition_penalty=1.2,
        frequency_penalty=0.5,
        stop=["\n"],
    )
    inputs = completion_to_generate(request, ValidationLimits(adapter_ids=("lora",)))
    assert [item.inputs for item in inputs] == ["a", "b"]
    params = inputs[0].parameters
    assert inputs[0].add_special_tokens is True
    assert params.do_sample is True
    assert params.temperature == 0.3
    assert params.top_p == 0.8
    assert params.seed == 4
    assert params.repetition_penalty == 1.2
    assert params.frequency_penalty == 0.5
    assert params.stop == ("\n",)
    assert params.max_new_tokens == 5
    assert params.details is True
    assert params.decoder_input_details is True
    assert params.adapter_id == "lora"


def test_stream_turns_prefill_details_off_and_temperature_zero_is_greedy() -> None:
    (item,) = completion_to_generate(completion(stream=True, temperature=0), ValidationLimits())
    assert item.parameters.decoder_input_details is False
    assert (item.parameters.do_sample, item.parameters.temperature) == (False, None)
    valid = validate_generate(item, ValidationLimits(), ByteEncoder(), stream=True)
    assert valid.input_ids[0] == 256  # special tokens are added for completions


def test_suffix_is_refused() -> None:
    with pytest.raises(SuffixNotSupportedError) as info:
        completion_to_generate(completion(suffix="end"), ValidationLimits())
    assert info.value.status == 422
    assert info.value.to_body() == {
        "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
        "error_type": "suffix not supported",
    }


def test_prompt_count_is_limited() -> None:
    limits = ValidationLimits(max_client_batch_size=2)
    assert len(completion_to_generate(completion(prompt=["a", "b"]), limits)) == 2
    with pytest.raises(BatchSizeExceededError) as info:
        completion_to_generate(completion(prompt=["a", "b", "c"]), limits)
    assert info.value.status == 422
    assert info.value.to_body() == {
        "error": "Number of prompts exceeds the maximum allowed batch size of 2",
        "error_type": "batch size exceeded",
    }


def test_suffix_is_checked_before_the_prompt_count() -> None:
    limits = ValidationLimits(max_client_batch_size=1)
    with pytest.raises(SuffixNotSupportedError):
        completion_to_generate(completion(prompt=["a", "b"], suffix="x"), limits)


def test_vertex_instances() -> None:
    body = {
        "instances": [
            {"inputs": "Hi", "parameters": {"max_new_tokens": 3, "seed": 5, "top_k": 2}},
            {"messages": [{"role": "user", "content": "Hello"}]},
        ]
    }
    mapped = vertex_to_generate(decode_vertex(json.dumps(body).encode()))
    first, second = mapped
    assert isinstance(first, GenerateInput)
    assert first.parameters.do_sample is True
    assert first.parameters.max_new_tokens == 3
    assert first.parameters.seed == 5
    assert first.parameters.top_k is None  # only max_new_tokens and seed are honoured
    assert isinstance(second, ChatRequest)


def test_vertex_without_instances() -> None:
    with pytest.raises(VertexEmptyInstancesError) as info:
        vertex_to_generate(decode_vertex(b'{"instances": []}'))
    assert info.value.status == 422
    assert info.value.to_body() == {
        "error": "Input validation error",
        "error_type": "Input validation error",
    }
