"""Grammar-constrained generation against the real service (launcher, Gunicorn, engine).

The ``openai`` SDK, unchanged, calls a tool on SmolLM2 (``tool_choice="required"``) and
streams a tool call; ``/generate`` with TGI's ``{"type": "json", "value": schema}`` grammar
and chat's ``response_format`` answer JSON that parses and follows the schema. A model this
small would not do either on its own: the runner's token masks make it.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import jsonschema
import openai
import pytest

from tgi_server.testing import LaunchedService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
QUESTION: Any = [{"role": "user", "content": "What is the weather like in Paris today?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 16},
    },
    "required": ["name", "age", "city"],
}


def openai_client(service: LaunchedService) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)


def post_json(service: LaunchedService, path: str, body: Any) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=300)
    try:
        headers = {"Content-Type": "application/json"}
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_openai_tool_call(service: LaunchedService) -> None:
    completion = openai_client(service).chat.completions.create(
        model="tgi",
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
    )
    message = completion.choices[0].message
    assert message.content is None
    [call] = message.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("0", "function", "get_weather")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)


def test_openai_streamed_tool_call(service: LaunchedService) -> None:
    stream = openai_client(service).chat.completions.create(
        model="tgi",
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
        stream=True,
    )
    names, pieces = [], []
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            assert call.function is not None
            names.append(call.function.name)
            pieces.append(call.function.arguments or "")
    assert names[0] == "get_weather" and set(names[1:]) <= {None}
    assert set(json.loads("".join(pieces))) == {"city"}


def test_generate_with_a_json_grammar(service: LaunchedService) -> None:
    parameters = {"max_new_tokens": 80, "grammar": {"type": "json", "value": PERSON}}
    body = {"inputs": "Describe a person as JSON:", "parameters": parameters}
    status, answer = post_json(service, "/generate", body)
    assert status == 200, answer
    person = json.loads(answer["generated_text"])
    jsonschema.validate(person, PERSON)


def test_chat_response_format(service: LaunchedService) -> None:
    response_format: Any = {"type": "json_object", "value": PERSON}  # TGI's shape
    completion = openai_client(service).chat.completions.create(
        model="tgi",
        messages=[{"role": "user", "content": "Invent a person. Answer in JSON."}],
        response_format=response_format,
        temperature=0,
        max_tokens=80,
    )
    content = completion.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), PERSON)


def test_generate_grammar_errors(service: LaunchedService) -> None:
    body = {"inputs": "x", "parameters": {"grammar": {"type": "json", "value": {"type": "object"}}}}
    assert post_json(service, "/generate", body) == (
        422,
        {
            "error": "Input validation error: grammar is not valid: "
            "Grammar must have a 'properties' field",
            "error_type": "validation",
        },
    )
