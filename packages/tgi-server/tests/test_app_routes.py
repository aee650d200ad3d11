"""The generating routes' exact bytes, through the real app over a real engine on a thread.

The engine runs tgi_scheduler's FakeRunner: each token is the previous id + 1 with logprob
-0.5, so answers are known in advance and compared byte for byte, SSE framing included
(texts come from the real SmolLM2 tokenizer). Native routes, then the OpenAI ones,
``/vertex``, ``/invocations`` and the tokenizing routes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import falcon.testing

from tgi_core.validation import DEFAULT_TOOL_PROMPT, NO_TOOL
from tgi_server.testing import (
    HARNESS_LIMITS,
    Harness,
    read_stream,
    smollm2_tokenizer,
    sse_events,
)

COMPACT = {"separators": (",", ":"), "ensure_ascii": False}
TOKENIZER = smollm2_tokenizer()
HELLO = TOKENIZER.encode("Hello")[-1]  # FakeRunner continues with HELLO + 1, HELLO + 2, ...
# TGI's key order of an OpenAI answer, a chat chunk and a completion's final event.
OPENAI_KEYS = ["object", "id", "created", "model", "system_fingerprint", "choices", "usage"]


def token(token_id: int) -> dict[str, Any]:
    text = TOKENIZER.decode([token_id])
    return {"id": token_id, "text": text, "logprob": -0.5, "special": False}


def texts(*token_ids: int) -> str:
    return "".join(TOKENIZER.decode([i]) for i in token_ids)


# --- native routes -------------------------------------------------------------------------


def test_generate_stream_bytes(harness: Harness) -> None:
    collector, body = read_stream(
        harness.app(),
        "/generate_stream",
        {"inputs": "Hello", "parameters": {"max_new_tokens": 3, "details": True}},
    )
    assert collector.status == 200
    headers = dict(collector.headers)
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert (headers["x-compute-type"], headers["x-compute-characters"]) == ("cpu+optimized", "5")
    ids = [HELLO + 1, HELLO + 2, HELLO + 3]
    expected = [
        {"index": 1, "token": token(ids[0]), "generated_text": None, "details": None},
        {"index": 2, "token": token(ids[1]), "generated_text": None, "details": None},
        {
            "index": 3,
            "token": token(ids[2]),
            "generated_text": texts(*ids),
            "details": {
                "finish_reason": "length",
                "generated_tokens": 3,
                "seed": None,
                "input_length": 1,
            },
        },
    ]
    assert body == b"".join(
        b"data: " + json.dumps(e, **COMPACT).encode() + b"\n\n" for e in expected
    )


def test_generate_stream_top_tokens_and_no_details(harness: Harness) -> None:
    _, body = read_stream(
        harness.app(),
        "/generate_stream",
        {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "top_n_tokens": 2}},
    )
    first, last = sse_events(body)
    assert first["top_tokens"] == [token(HELLO + 1), {**token(HELLO + 2), "logprob": -1.5}]
    assert last["details"] is None and last["generated_text"] == texts(HELLO + 1, HELLO + 2)


def test_generate_with_details_prefill_and_top_tokens(client: falcon.testing.TestClient) -> None:
    parameters = {
        "max_new_tokens": 2,
        "details": True,
        "decoder_input_details": True,
        "top_n_tokens": 1,
    }
    result = client.simulate_post(
        "/generate", json={"inputs": "Hello world", "parameters": parameters}
    )
    prompt = TOKENIZER.encode("Hello world")
    ids = [prompt[-1] + 1, prompt[-1] + 2]
    assert (
        result.content
        == json.dumps(
            {
                "generated_text": texts(*ids),
                "details": {
                    "finish_reason": "length",
                    "generated_tokens": 2,
                    "seed": None,
                    "prefill": [
                        {"id": prompt[0], "text": "Hello", "logprob": None},
                        {"id": prompt[1], "text": " world", "logprob": -1.0},
                    ],
                    "tokens": [token(ids[0]), token(ids[1])],
                    "top_tokens": [[token(ids[0])], [token(ids[1])]],
                },
            },
            **COMPACT,
        ).encode()
    )
    headers = result.headers
    assert headers["x-compute-type"] == "cpu+optimized"
    assert (headers["x-prompt-tokens"], headers["x-generated-tokens"]) == ("2", "2")
    assert headers["x-compute-characters"] == "11"
    assert float(headers["x-compute-time"]) > 0
    for name in (
        "x-total-time",
        "x-validation-time",
        "x-queue-time",
        "x-inference-time",
        "x-time-per-token",
    ):
        assert headers[name].isdigit(), name


def test_generate_without_details_and_with_full_text(client: falcon.testing.TestClient) -> None:
    plain = client.simulate_post(
        "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    )
    assert (
        plain.content
        == json.dumps({"generated_text": texts(HELLO + 1, HELLO + 2)}, **COMPACT).encode()
    )
    full = client.simulate_post(
        "/generate",
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 2, "return_full_text": True}},
    )
    assert full.json == {"generated_text": "Hello" + texts(HELLO + 1, HELLO + 2)}


def test_compat_generate_returns_a_list_with_the_full_text(harness: Harness) -> None:
    app = harness.app()
    result = falcon.testing.TestClient(app).simulate_post(
        "/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    )
    assert result.json == [{"generated_text": "Hello" + texts(HELLO + 1, HELLO + 2)}]
    _, body = read_stream(
        app, "/", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}, "stream": True}
    )
    assert sse_events(body)[-1]["generated_text"] == "Hello" + texts(HELLO + 1, HELLO + 2)


def test_best_of_returns_the_other_sequences(client: falcon.testing.TestClient) -> None:
    parameters = {"max_new_tokens": 2, "best_of": 2, "do_sample": True, "details": True}
    details = client.simulate_post(
        "/generate", json={"inputs": "Hello", "parameters": parameters}
    ).json["details"]
    (other,) = details["best_of_sequences"]
    assert set(other) == {
        "generated_text",
        "finish_reason",
        "generated_tokens",
        "seed",
        "prefill",
        "tokens",
    }
    assert isinstance(details["seed"], int) and isinstance(other["seed"], int)
    assert details["seed"] != other["seed"]


def test_tokenize(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/tokenize", json={"inputs": "Hello world"})
    ids = TOKENIZER.encode("Hello world")
    assert result.json == [
        {"id": ids[0], "text": "Hello", "start": 0, "stop": 5},
        {"id": ids[1], "text": " world", "start": 5, "stop": 11},
    ]


# --- OpenAI routes ----------------------------------------------------------------------------


def test_chat_stream_bytes_with_usage_and_logprobs(harness: Harness) -> None:
    payload = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "stream": True,
        "logprobs": True,
        "stream_options": {"include_usage": True},
    }
    _, body = read_stream(harness.app(), "/v1/chat/completions", payload)
    prompt = TOKENIZER.encode(
        TOKENIZER.apply_chat_template([{"role": "user", "content": "Hi"}]), add_special_tokens=False
    )
    first, second, usage, done = sse_events(body)
    assert done == "[DONE]"
    text = TOKENIZER.decode([prompt[-1] + 1])
    assert list(first) == OPENAI_KEYS
    assert first["object"] == "chat.completion.chunk" and first["id"] == ""
    assert (first["model"], first["system_fingerprint"], first["usage"]) == (
        "smollm2",
        "0.1.0-native",
        None,
    )
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": text},
            "logprobs": {"content": [{"token": text, "logprob": -0.5, "top_logprobs": []}]},
            "finish_reason": None,
        }
    ]
    assert second["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": 2,
        "total_tokens": len(prompt) + 2,
    }


def test_chat_echoes_another_model_name(client: falcon.testing.TestClient) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    served = client.simulate_post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": 1, "model": "tgi"}
    )
    assert served.json["model"] == "smollm2"
    assert served.json["object"] == "chat.completion"
    assert served.json["choices"][0]["logprobs"] is None
    # Another name is echoed; it selects a LoRA adapter only where one of that name is
    # loaded (none here: the base model answers, as TGI's does).
    adapter = client.simulate_post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": 1, "model": "my-lora"}
    )
    assert adapter.status_code == 200
    assert adapter.json["model"] == "my-lora"


def test_lora_adapters_are_listed_and_an_unknown_one_is_refused(harness: Harness) -> None:
    limits = dataclasses.replace(HARNESS_LIMITS, adapter_ids=("sql", "chat"))
    client = harness.client(limits=limits)
    assert client.simulate_get("/info").json["lora_adapters"] == ["sql", "chat"]
    models = [entry["id"] for entry in client.simulate_get("/v1/models").json["data"]]
    assert models == ["smollm2", "sql", "chat"]
    known = {"inputs": "Hi", "parameters": {"max_new_tokens": 1, "adapter_id": "sql"}}
    assert client.simulate_post("/generate", json=known).status_code == 200
    unknown = {"inputs": "Hi", "parameters": {"max_new_tokens": 1, "adapter_id": "nope"}}
    refused = client.simulate_post("/generate", json=unknown)
    assert refused.status_code == 422
    assert refused.json == {
        "error": "Input validation error: `adapter_id` 'nope' is not a loaded LoRA adapter "
        "(loaded: sql, chat)",
        "error_type": "validation",
    }


def test_completions_stream_interleaves_prompts(harness: Harness) -> None:
    payload = {"prompt": ["Hello", "world"], "max_tokens": 2, "stream": True}
    _, body = read_stream(harness.app(), "/v1/completions", payload)
    parsed = sse_events(body)
    assert parsed[-1] == "[DONE]"
    by_prompt: dict[int, list[Any]] = {0: [], 1: []}
    for event in parsed[:-1]:
        (choice,) = event["choices"]
        by_prompt[choice["index"]].append(event)
    for index, word in enumerate(["Hello", "world"]):
        last_id = TOKENIZER.encode(word)[-1]
        chunk, final = by_prompt[index]
        assert list(chunk) == ["object", "id", "created", "choices", "model", "system_fingerprint"]
        assert chunk["choices"] == [
            {"index": index, "text": texts(last_id + 1), "logprobs": None, "finish_reason": ""}
        ]
        assert list(final) == OPENAI_KEYS
        assert final["choices"][0]["finish_reason"] == "length"
        assert final["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_completions_sum_usage_and_headers(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post(
        "/v1/completions", json={"prompt": ["Hello", "world"], "max_tokens": 2}
    )
    assert result.json["object"] == "text_completion"
    assert [c["index"] for c in result.json["choices"]] == [0, 1]
    assert result.json["choices"][0]["text"] == texts(HELLO + 1, HELLO + 2)
    assert result.json["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert (result.headers["x-generated-tokens"], result.headers["x-compute-characters"]) == (
        "4",
        "10",
    )
    assert "x-compute-time" not in result.headers


def test_invocations_dispatch_by_shape(client: falcon.testing.TestClient) -> None:
    generate = client.simulate_post(
        "/invocations", json={"inputs": "Hello", "parameters": {"max_new_tokens": 1}}
    )
    assert generate.json == [{"generated_text": "Hello" + texts(HELLO + 1)}]
    chat = client.simulate_post(
        "/invocations", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    )
    assert chat.json["object"] == "chat.completion"
    completion = client.simulate_post("/invocations", json={"prompt": "Hello", "max_tokens": 1})
    assert completion.json["object"] == "text_completion"
    neither = client.simulate_post("/invocations", json={"foo": 1})
    assert neither.status_code == 422
    assert neither.text.endswith("data did not match any variant of untagged enum SagemakerRequest")


def test_vertex(client: falcon.testing.TestClient) -> None:
    instances = [
        {"inputs": "Hello", "parameters": {"max_new_tokens": 2}},
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
    ]
    result = client.simulate_post("/vertex", json={"instances": instances})
    predictions = result.json["predictions"]
    assert predictions[0] == texts(HELLO + 1, HELLO + 2) and len(predictions) == 2
    empty = client.simulate_post("/vertex", json={"instances": []})
    assert (empty.status_code, empty.json) == (
        422,
        {"error": "Input validation error", "error_type": "Input validation error"},
    )
    failing = client.simulate_post(
        "/vertex", json={"instances": [{"inputs": "Hello", "parameters": {"max_new_tokens": 500}}]}
    )
    assert (failing.status_code, failing.json) == (
        500,
        {"error": "Incomplete generation", "error_type": "Incomplete generation"},
    )


def test_chat_tokenize(client: falcon.testing.TestClient) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    result = client.simulate_post("/chat_tokenize", json={"messages": messages})
    templated = TOKENIZER.apply_chat_template(messages)
    assert result.json["templated_text"] == templated
    assert [t["id"] for t in result.json["tokenize_response"]] == TOKENIZER.encode(
        templated, add_special_tokens=False
    )


def test_chat_tokenize_places_the_tools_after_the_last_message(
    client: falcon.testing.TestClient,
) -> None:
    """SmolLM2's template does not render ``tools``: TGI appends them, then the tool prompt."""
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    messages = [{"role": "user", "content": "Hi"}]
    result = client.simulate_post("/chat_tokenize", json={"messages": messages, "tools": [tool]})
    no_tool = NO_TOOL.function
    offered = [
        {
            "type": "function",
            "function": {"description": None, "name": "weather", "arguments": {"type": "object"}},
        },
        {
            "type": "function",
            "function": {
                "description": no_tool.description,
                "name": "no_tool",
                "arguments": no_tool.arguments,
            },
        },
    ]
    content = "Hi\n---\n" + json.dumps(offered, **COMPACT) + "\n" + DEFAULT_TOOL_PROMPT
    expected = TOKENIZER.apply_chat_template([{"role": "user", "content": content}])
    assert result.json["templated_text"] == expected
