"""Tool calls and ``response_format`` through the app: TGI's answers, stream and non-stream.

The engine runs a ``ScriptedRunner``: a model that spells a scripted answer token by token
(SmolLM2's tokens), the tool-call JSON when the request carries a grammar and plain text
when it does not, then its end-of-sequence token. It records the grammar of every request
it prefills, so the tests also check that the regex the front end compiled accepts the
answer TGI's tool format expects.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import falcon.testing
import pytest

from tgi_core.contract import (
    SequenceOutput,
    Shape,
    StepOutput,
    StepPlan,
    WarmupProgress,
    WarmupReport,
)
from tgi_core.settings.slices import SchedulerSettings, ServerSettings, ValidationLimits
from tgi_core.tokenization import Tokenizer
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine_client import InProcessEngineClient
from tgi_server.testing import (
    read_stream,
    smollm2_tokenizer,
    sse_events,
    start_inprocess_engine,
)

LIMITS = ValidationLimits(max_input_tokens=480, max_total_tokens=512)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '{"function": {"_name": "get_weather", "city": "Paris"}}'
NO_TOOL_CALL = '{"function": {"_name": "no_tool"}}'
TEXT = "Hello! How can I help?"


class ScriptedRunner:
    """A ``ModelRunner`` answering ``tool_text`` to requests with a grammar and ``text`` to
    the others, one token per step, then ``eos_token_id``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_ids[0]
        self.tool_text = CALL
        self.text = TEXT
        self.prefills: list[tuple[tuple[int, ...], str | None]] = []  # (prompt, grammar)
        self._scripts: dict[int, list[int]] = {}

    @property
    def num_kv_blocks(self) -> int:
        return 256

    @property
    def block_size(self) -> int:
        return 16

    @property
    def num_unwarmed_shapes(self) -> int:
        return 0

    def warmup(self, shapes: Sequence[Shape], progress: WarmupProgress | None = None) -> Any:
        return WarmupReport(num_shapes=len(shapes), seconds=0.0, num_kv_blocks=256)

    def execute(self, plan: StepPlan) -> StepOutput:
        for request_id in plan.released:
            self._scripts.pop(request_id, None)
        outputs = []
        for item in plan.prefill:
            grammar = item.sampling.grammar
            self.prefills.append((item.token_ids, grammar))
            text = self.tool_text if grammar is not None else self.text
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            self._scripts[item.request_id] = [*ids, self.eos_token_id]
            outputs.append(self._next(item.request_id))
        outputs.extend(self._next(item.request_id) for item in plan.decode)
        return StepOutput(plan.step_id, tuple(outputs))

    def _next(self, request_id: int) -> SequenceOutput:
        script = self._scripts[request_id]
        return SequenceOutput(request_id, script.pop(0) if len(script) > 1 else script[0], -0.25)


class ToolHarness:
    def __init__(self) -> None:
        self.tokenizer = smollm2_tokenizer()
        self.runner = ScriptedRunner(self.tokenizer)
        scheduler = SchedulerSettings(
            max_batch_size=4,
            max_batch_prefill_tokens=LIMITS.max_total_tokens,
            max_input_tokens=LIMITS.max_input_tokens,
            max_total_tokens=LIMITS.max_total_tokens,
            batch_bucket_size=4,
            prefill_batch_bucket_size=4,
            pad_sequence_to_multiple_of=128,
            block_size=16,
        )
        self.engine = start_inprocess_engine(self.runner, self.tokenizer, scheduler)
        self.info = self.engine.info

    def app(self, limits: ValidationLimits = LIMITS) -> Any:
        server = ServerSettings(model_id="smollm2", limits=limits)
        client = InProcessEngineClient(self.engine)
        return create_app(server, client, self.tokenizer, ModelInfo.from_engine_info(self.info))


@pytest.fixture(scope="module")
def harness() -> Iterator[ToolHarness]:
    harness = ToolHarness()
    yield harness
    harness.engine.stop()


@pytest.fixture
def client(harness: ToolHarness) -> falcon.testing.TestClient:
    harness.runner.tool_text, harness.runner.text = CALL, TEXT
    harness.runner.prefills.clear()
    return falcon.testing.TestClient(harness.app())


def chat(client: falcon.testing.TestClient, **fields: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={"messages": MESSAGES, **fields})


def test_non_stream_tool_call(client: falcon.testing.TestClient, harness: ToolHarness) -> None:
    result = chat(client, tools=[WEATHER])
    assert result.status_code == 200, result.text
    choice = result.json["choices"][0]
    # TGI's shape: no content key, id "0", description null, arguments a JSON string
    assert choice["message"] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "0",
                "type": "function",
                "function": {
                    "description": None,
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
            }
        ],
    }
    assert choice["finish_reason"] == "stop"
    num_tokens = len(harness.tokenizer.encode(CALL, add_special_tokens=False)) + 1
    assert result.json["usage"]["completion_tokens"] == num_tokens
    # The model got the tool grammar, and the answer TGI expects matches it.
    [(prompt, grammar)] = harness.runner.prefills
    assert grammar is not None and re.fullmatch(grammar, CALL)
    assert re.fullmatch(grammar, NO_TOOL_CALL)  # tool_choice auto offers no_tool
    assert "get_weather" in harness.tokenizer.decode(list(prompt))


def test_required_tool_choice_offers_no_no_tool(
    client: falcon.testing.TestClient, harness: ToolHarness
) -> None:
    result = chat(client, tools=[WEATHER], tool_choice="required")
    assert result.json["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == (
        "get_weather"
    )
    [(_, grammar)] = harness.runner.prefills
    assert grammar is not None and not re.fullmatch(grammar, NO_TOOL_CALL)


def test_no_tool_runs_the_request_again_without_tools(
    client: falcon.testing.TestClient, harness: ToolHarness
) -> None:
    harness.runner.tool_text = NO_TOOL_CALL
    result = chat(client, tools=[WEATHER])
    assert result.status_code == 200, result.text
    choice = result.json["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": TEXT}
    assert choice["finish_reason"] == "stop"
    [(first, grammar), (second, no_grammar)] = harness.runner.prefills
    assert grammar is not None and no_grammar is None
    # The second prompt is the plain chat: no tools, no tool prompt.
    plain = harness.tokenizer.apply_chat_template(MESSAGES)
    assert harness.tokenizer.decode(list(second)) == plain
    assert len(first) > len(second)
    usage = result.json["usage"]
    assert usage["prompt_tokens"] == len(second)
    assert usage["completion_tokens"] == len(harness.tokenizer.encode(TEXT)) + 1


def test_an_answer_cut_short_is_a_tool_error(client: falcon.testing.TestClient) -> None:
    result = chat(client, tools=[WEATHER], max_tokens=3)
    assert result.status_code == 422
    assert result.json["error_type"] == "tool_error"
    assert result.json["error"].startswith("Tool error: Failed to parse generated text: ")


def test_tools_and_response_format_are_exclusive(client: falcon.testing.TestClient) -> None:
    result = chat(client, tools=[WEATHER], response_format={"type": "json", "value": {}})
    assert result.status_code == 422
    assert result.json == {
        "error": "Tool error: Grammar and tools are mutually exclusive",
        "error_type": "tool_error",
    }


def tool_deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [event["choices"][0]["delta"] for event in events[:-1] if event["choices"]]


def test_stream_tool_call(harness: ToolHarness) -> None:
    harness.runner.tool_text = CALL
    payload = {"messages": MESSAGES, "tools": [WEATHER], "stream": True}
    payload["stream_options"] = {"include_usage": True}
    _, body = read_stream(harness.app(), "/v1/chat/completions", payload)
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    deltas = tool_deltas(events)
    assert deltas[0] == {
        "role": "assistant",
        "tool_calls": [
            {
                "index": 0,
                "id": "0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{"},
            }
        ],
    }
    calls = [delta["tool_calls"][0] for delta in deltas]
    assert all(call["function"]["name"] is None for call in calls[1:])
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"city": "Paris"}  # the wrapper's last "}" is trimmed
    # As in TGI, nothing follows the completed call but the usage chunk: the end-of-sequence
    # token is not sent, so no chunk has a finish_reason.
    assert all(event["choices"][0]["finish_reason"] is None for event in events[:-2])
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0


def test_stream_tool_call_id_follows_the_conversation(harness: ToolHarness) -> None:
    def first_id(history_ids: list[str]) -> str:
        calls = [
            {"id": call_id, "type": "function", "function": {"name": "get_weather"}}
            for call_id in history_ids
        ]
        messages = [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": calls},
            {"role": "tool", "content": "sunny", "tool_call_id": "0"},
            *MESSAGES,
        ]
        payload = {"messages": messages, "tools": [WEATHER], "stream": True}
        _, body = read_stream(harness.app(), "/v1/chat/completions", payload)
        call_id: str = tool_deltas(sse_events(body))[0]["tool_calls"][0]["id"]
        return call_id

    harness.runner.tool_text = CALL
    assert first_id(["0", "4"]) == "5"
    uuid.UUID(first_id(["call_abc"]))


def test_stream_no_tool_answers_in_text(harness: ToolHarness) -> None:
    harness.runner.tool_text = NO_TOOL_CALL
    payload = {"messages": MESSAGES, "tools": [WEATHER], "stream": True}
    _, body = read_stream(harness.app(), "/v1/chat/completions", payload)
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    deltas = [event["choices"][0]["delta"] for event in events[:-1]]
    assert all(set(delta) == {"role", "content"} for delta in deltas)
    assert "".join(delta["content"] for delta in deltas) == TEXT
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_response_format_constrains_the_answer(
    client: falcon.testing.TestClient, harness: ToolHarness
) -> None:
    harness.runner.tool_text = '{"city": "Rome", "days": 3}'
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    result = chat(client, response_format={"type": "json_object", "value": schema})
    assert result.json["choices"][0]["message"] == {
        "role": "assistant",
        "content": '{"city": "Rome", "days": 3}',
    }
    [(_, grammar)] = harness.runner.prefills
    assert grammar is not None and re.fullmatch(grammar, '{"city": "Rome", "days": 3}')
    assert not re.fullmatch(grammar, '{"city": "Rome"}')


def test_generate_grammar_errors_and_disabled_support(harness: ToolHarness) -> None:
    client = falcon.testing.TestClient(harness.app())
    body = {"inputs": "Hi", "parameters": {"grammar": {"type": "json", "value": {}}}}
    result = client.simulate_post("/generate", json=body)
    assert result.status_code == 422
    assert result.json == {
        "error": "Input validation error: grammar is not valid: "
        "Grammar must have a 'properties' field",
        "error_type": "validation",
    }
    disabled = ValidationLimits(
        max_input_tokens=LIMITS.max_input_tokens,
        max_total_tokens=LIMITS.max_total_tokens,
        disable_grammar_support=True,
    )
    refused = falcon.testing.TestClient(harness.app(disabled))
    result = refused.simulate_post("/generate", json=body)
    assert result.json["error"] == "Input validation error: grammar is not supported"
    result = refused.simulate_post(
        "/v1/chat/completions", json={"messages": MESSAGES, "tools": [WEATHER]}
    )
    assert result.json["error"] == "Input validation error: grammar is not supported"
