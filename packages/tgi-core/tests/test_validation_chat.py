"""The chat mapping: template messages, tools, and the generate request TGI builds."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tgi_core.api import ChatRequest, Tool, decode_body
from tgi_core.errors import ToolError, ValidationError
from tgi_core.settings.slices import ValidationLimits
from tgi_core.testing import ByteEncoder
from tgi_core.validation import (
    DEFAULT_TOOL_PROMPT,
    NO_TOOL,
    chat_to_generate,
    messages_for_template,
    select_tools,
    tool_grammar,
    tool_prompt,
    validate_generate,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def chat(**fields: Any) -> ChatRequest:
    body = {"messages": [{"role": "user", "content": "Hi"}], **fields}
    return decode_body(json.dumps(body).encode(), ChatRequest)


def test_sampling_fields_are_mapped() -> None:
    request = chat(
        model="my-lora",
        temperature=0.5,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        max_tokens=12,
        seed=9,
        stop="END",
        top_logprobs=3,
        logprobs=True,
        stream=True,
    )
    generate = chat_to_generate(request, "<prompt>", ("my-lora",))
    params = generate.parameters
    assert generate.inputs == "<prompt>"
    assert generate.add_special_tokens is False
    assert params.do_sample is True
    assert params.temperature == 0.5
    assert params.top_p == 0.9
    assert params.repetition_penalty == 2.5
    assert params.frequency_penalty == 0.1
    assert params.max_new_tokens == 12
    assert params.seed == 9
    assert params.stop == ("END",)
    assert params.top_n_tokens == 3
    assert params.details is True
    assert params.decoder_input_details is False
    assert params.adapter_id == "my-lora"
    assert params.grammar is None


def test_temperature_zero_is_greedy_and_absent_samples() -> None:
    greedy = chat_to_generate(chat(temperature=0), "p").parameters
    assert (greedy.do_sample, greedy.temperature) == (False, None)
    default = chat_to_generate(chat(), "p").parameters
    assert (default.do_sample, default.temperature) == (True, None)


def test_tgi_model_and_max_completion_tokens() -> None:
    params = chat_to_generate(chat(model="tgi", max_completion_tokens=4), "p").parameters
    assert params.adapter_id is None
    assert params.max_new_tokens == 4


def test_a_model_that_names_no_loaded_adapter_is_the_base_model() -> None:
    # OpenAI clients always send a model, often the served model's own name
    for model in ("HuggingFaceTB/SmolLM2-135M-Instruct", "my-lora", "tgi"):
        assert chat_to_generate(chat(model=model), "p", ("other",)).parameters.adapter_id is None


def test_validated_chat_request_skips_special_tokens() -> None:
    generate = chat_to_generate(chat(temperature=0, max_tokens=3), "Hi")
    valid = validate_generate(generate, ValidationLimits(), ByteEncoder(), stream=True)
    assert valid.input_ids == tuple(b"Hi")
    assert not valid.sampling.do_sample
    assert valid.details


def test_messages_are_flattened_for_the_template() -> None:
    request = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this? "},
                    {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "0",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"what": "cat"}'},
                    }
                ],
            },
            {"role": "tool", "content": "a cat", "tool_call_id": "0"},
        ]
    )
    assert messages_for_template(request) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this? ![](https://x/cat.png)"},
        {
            "role": "assistant",
            "content": '[{"id":"0","type":"function","function":{"description":null,'
            '"name":"look","arguments":"{\\"what\\": \\"cat\\"}"}}]',
        },
        {"role": "tool", "content": "a cat", "tool_call_id": "0"},
    ]


def test_tools_and_response_format_are_exclusive() -> None:
    request = chat(tools=[WEATHER], response_format={"type": "json", "value": {}})
    with pytest.raises(ToolError) as info:
        chat_to_generate(request, "p")
    assert info.value.status == 422
    assert info.value.to_body() == {
        "error": "Tool error: Grammar and tools are mutually exclusive",
        "error_type": "tool_error",
    }


def names(tools: tuple[Tool, ...]) -> list[str]:
    return [tool.function.name for tool in tools]


def test_tool_choice_selects_the_offered_tools() -> None:
    offered = select_tools(chat(tools=[WEATHER]))
    assert offered is not None
    assert names(offered) == ["get_weather", "no_tool"]
    assert offered[-1] == NO_TOOL
    required = select_tools(chat(tools=[WEATHER], tool_choice="required"))
    assert required is not None
    assert names(required) == ["get_weather"]
    named = select_tools(
        chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert named is not None
    assert names(named) == ["get_weather"]
    assert select_tools(chat(tools=[WEATHER], tool_choice="none")) is None
    assert select_tools(chat()) is None
    with pytest.raises(ToolError, match=r"^Tool error: Tool with name nope not found$"):
        select_tools(chat(tools=[WEATHER], tool_choice="nope"))


def test_tool_grammar_shape() -> None:
    offered = select_tools(chat(tools=[WEATHER]))
    assert offered is not None
    grammar = tool_grammar(offered)
    weather = grammar["$functions"]["get_weather"]
    assert weather["required"] == ["_name", "location"]
    assert list(weather["properties"]) == ["_name", "location"]  # _name first, as TGI
    assert weather["properties"]["_name"] == {"type": "string", "const": "get_weather"}
    assert weather["properties"]["location"] == {"type": "string"}
    assert weather["additionalProperties"] is False
    # TGI 3's no_tool has no arguments: choosing it means "run again without tools".
    assert grammar["$functions"]["no_tool"] == {
        "description": "Open ended response with no specific tool selected",
        "additionalProperties": False,
        "properties": {"_name": {"type": "string", "const": "no_tool"}},
        "required": ["_name"],
    }
    assert grammar["properties"]["function"]["anyOf"] == [
        {"$ref": "#/$functions/get_weather"},
        {"$ref": "#/$functions/no_tool"},
    ]
    assert grammar["required"] == ["function"]


def test_tool_grammar_regex_accepts_exactly_a_call() -> None:
    generate = chat_to_generate(chat(tools=[WEATHER], max_tokens=5), "p")
    valid = validate_generate(generate, ValidationLimits(), ByteEncoder(), stream=False)
    regex = valid.sampling.grammar
    assert regex is not None
    call = '{"function": {"_name": "get_weather", "location": "Paris"}}'
    assert re.fullmatch(regex, call)
    assert re.fullmatch(regex, '{"function":{"_name":"no_tool"}}')
    assert not re.fullmatch(regex, "{}")  # the function is required (TGI's is optional)
    assert not re.fullmatch(regex, '{"function": {"_name": "get_weather"}}')  # location
    assert not re.fullmatch(regex, '{"function": {"_name": "no_tool", "content": "x"}}')
    # tool_choice "none" uses no grammar.
    plain = chat_to_generate(chat(tools=[WEATHER], tool_choice="none", max_tokens=5), "p")
    assert plain.parameters.grammar is None
    validate_generate(plain, ValidationLimits(), ByteEncoder(), stream=False)


def test_required_without_tools_uses_none_and_no_tool_is_not_a_choice() -> None:
    assert select_tools(chat(tools=[], tool_choice="required")) is None
    assert chat_to_generate(chat(tools=[], tool_choice="required"), "p").parameters.grammar is None
    with pytest.raises(ToolError, match=r"^Tool error: Tool with name no_tool not found$"):
        select_tools(chat(tools=[WEATHER], tool_choice="no_tool"))


def test_response_format_becomes_the_grammar() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    generate = chat_to_generate(chat(response_format={"type": "json_object", "value": schema}), "p")
    valid = validate_generate(generate, ValidationLimits(), ByteEncoder(), stream=False)
    assert valid.sampling.grammar is not None
    assert re.fullmatch(valid.sampling.grammar, '{"n": 42}')
    assert not re.fullmatch(valid.sampling.grammar, '{"n": "x"}')
    disabled = ValidationLimits(disable_grammar_support=True)
    with pytest.raises(ValidationError) as info:
        validate_generate(generate, disabled, ByteEncoder(), stream=False)
    assert info.value.message == "Input validation error: grammar is not supported"


def test_tool_prompt_defaults_when_empty() -> None:
    assert tool_prompt(chat()) == DEFAULT_TOOL_PROMPT
    assert tool_prompt(chat(tool_prompt="")) == DEFAULT_TOOL_PROMPT
    assert tool_prompt(chat(tool_prompt="Use a tool.")) == "Use a tool."
