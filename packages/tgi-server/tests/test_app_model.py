"""The app over the real engine: the torch runner on the embedded SmolLM2-135M-Instruct GGUF.

One engine per module (float32 on the CPU, small limits, warmup off to keep the suite
short: warmup is the runner's business and tested there). What only a real model shows:
end-of-sequence tokens marked special and kept out of the text, greedy answers that agree
between routes, prompt logprobs, top tokens that contain the chosen one, stop sequences,
seeds that reproduce, ``best_of`` picking the best mean logprob, and chat answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from tgi_core.settings import Settings
from tgi_core.tokenization import load_tokenizer
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine import InProcessEngine, build_engine
from tgi_server.engine_client import InProcessEngineClient
from tgi_server.testing import read_stream, sse_events

pytestmark = pytest.mark.slow  # one real model per module: ~20 s to load on a busy 2-core box

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ARGV = [
    "--dtype", "float32", "--device", "cpu",
    "--max-input-tokens", "448", "--max-total-tokens", "512",
    "--max-batch-prefill-tokens", "512", "--max-batch-size", "4",
    "--num-kv-blocks", "96", "--max-concurrent-requests", "16", "--enable-prefill-logprobs",
]  # fmt: skip


class Model:
    """The engine on a thread, its tokenizer, and a TestClient over a fresh app."""

    def __init__(self) -> None:
        settings = Settings.from_sources(ARGV, {"WARMUP_ENABLED": "false"})
        ready = build_engine(settings)
        self.engine = InProcessEngine(ready.engine, ready.info).start()
        self.settings = settings.server()
        self.model_info = ModelInfo.from_engine_info(
            ready.info, model_id="HuggingFaceTB/SmolLM2-135M-Instruct"
        )
        self.tokenizer = load_tokenizer(settings.model_id)
        self.prompt = self.tokenizer.apply_chat_template(QUESTION)

    def app(self) -> Any:
        client = InProcessEngineClient(self.engine)
        return create_app(self.settings, client, self.tokenizer, self.model_info)


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    model = Model()
    yield model
    model.engine.stop()


@pytest.fixture
def client(model: Model) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(model.app())


def stream(app: Any, path: str, payload: Any) -> list[Any]:
    """POST ``payload``, read the whole SSE answer, return each event's data."""
    collector, body = read_stream(app, path, payload, timeout_s=120)
    assert collector.status == 200
    return sse_events(body)


def test_greedy_answer_ends_with_a_special_eos(
    model: Model, client: falcon.testing.TestClient
) -> None:
    parameters = {"max_new_tokens": 24, "details": True}
    result = client.simulate_post(
        "/generate", json={"inputs": model.prompt, "parameters": parameters}
    )
    assert result.status_code == 200, result.text
    details = result.json["details"]
    assert details["finish_reason"] == "eos_token"
    *words, eos = details["tokens"]
    assert (eos["text"], eos["special"]) == ("<|im_end|>", True)
    assert not any(token["special"] for token in words)
    text = result.json["generated_text"]
    assert "Paris" in text and "<|im_end|>" not in text
    assert "".join(token["text"] for token in words) == text
    assert details["seed"] is None  # greedy
    # The stream of the same request yields the same tokens and text.
    events = stream(
        model.app(), "/generate_stream", {"inputs": model.prompt, "parameters": parameters}
    )
    assert [event["index"] for event in events] == list(range(1, len(events) + 1))
    streamed = [event["token"] for event in events]
    # Same tokens; logprobs agree up to float noise (the second prefill hits the prefix cache).
    assert [{**t, "logprob": 0} for t in streamed] == [
        {**t, "logprob": 0} for t in details["tokens"]
    ]
    assert [t["logprob"] for t in streamed] == pytest.approx(
        [t["logprob"] for t in details["tokens"]], abs=1e-4
    )
    assert events[-1]["generated_text"] == text
    assert events[-1]["details"]["finish_reason"] == "eos_token"


def test_prefill_logprobs_and_top_tokens(model: Model, client: falcon.testing.TestClient) -> None:
    parameters = {"max_new_tokens": 4, "decoder_input_details": True, "top_n_tokens": 3}
    inputs = "The capital of France is"
    details = client.simulate_post(
        "/generate", json={"inputs": inputs, "parameters": parameters}
    ).json["details"]
    ids = [token["id"] for token in client.simulate_post("/tokenize", json={"inputs": inputs}).json]
    assert [token["id"] for token in details["prefill"]] == ids
    assert details["prefill"][0]["logprob"] is None
    assert all(token["logprob"] < 0 for token in details["prefill"][1:])
    assert "".join(token["text"] for token in details["prefill"]) == inputs
    for chosen, tops in zip(details["tokens"], details["top_tokens"], strict=True):
        assert len(tops) == 3
        logprobs = [top["logprob"] for top in tops]
        assert logprobs == sorted(logprobs, reverse=True)
        assert (tops[0]["id"], tops[0]["logprob"]) == (chosen["id"], chosen["logprob"])  # greedy


def test_stop_sequences_keep_their_text(model: Model, client: falcon.testing.TestClient) -> None:
    parameters = {"max_new_tokens": 24, "stop": ["France"], "details": True}
    result = client.simulate_post(
        "/generate", json={"inputs": model.prompt, "parameters": parameters}
    ).json
    assert result["details"]["finish_reason"] == "stop_sequence"
    assert result["generated_text"].endswith("France")


def test_seeds_reproduce_and_best_of_picks_the_best(client: falcon.testing.TestClient) -> None:
    sampled = {"max_new_tokens": 8, "do_sample": True, "seed": 42, "details": True}
    first, second = (
        client.simulate_post(
            "/generate", json={"inputs": "Once upon a time", "parameters": sampled}
        ).json
        for _ in range(2)
    )
    assert first["generated_text"] == second["generated_text"]
    assert first["details"]["seed"] == 42
    best_of = {"max_new_tokens": 8, "do_sample": True, "best_of": 2, "details": True}
    details = client.simulate_post(
        "/generate", json={"inputs": "Once upon a time", "parameters": best_of}
    ).json["details"]
    (other,) = details["best_of_sequences"]

    def mean(tokens: list[dict[str, Any]]) -> float:
        return sum(token["logprob"] for token in tokens) / len(tokens)

    assert mean(details["tokens"]) >= mean(other["tokens"])


def test_compat_route_returns_the_full_text(
    model: Model, client: falcon.testing.TestClient
) -> None:
    (result,) = client.simulate_post(
        "/", json={"inputs": model.prompt, "parameters": {"max_new_tokens": 24}}
    ).json
    assert result["generated_text"].startswith(model.prompt) and "Paris" in result["generated_text"]


def test_chat_answers_and_its_stream_agree(model: Model, client: falcon.testing.TestClient) -> None:
    payload = {
        "messages": QUESTION,
        "max_tokens": 24,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    result = client.simulate_post("/v1/chat/completions", json=payload)
    assert result.status_code == 200, result.text
    completion = result.json
    (choice,) = completion["choices"]
    assert completion["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert choice["finish_reason"] == "stop" and "Paris" in choice["message"]["content"]
    prompt_tokens = len(
        client.simulate_post("/chat_tokenize", json={"messages": QUESTION}).json[
            "tokenize_response"
        ]
    )
    usage = completion["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
    assert len(choice["logprobs"]["content"]) == usage["completion_tokens"]
    assert all(len(item["top_logprobs"]) == 2 for item in choice["logprobs"]["content"])
    events = stream(
        model.app(),
        "/v1/chat/completions",
        {**payload, "stream": True, "stream_options": {"include_usage": True}},
    )
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert (
        "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
        == choice["message"]["content"]
    )
    assert chunks[-1]["choices"][0]["delta"]["content"] == ""  # <|im_end|> is special
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert (usage_chunk["choices"], usage_chunk["usage"]) == ([], usage)


def test_tools_answer_with_a_tool_call(client: falcon.testing.TestClient) -> None:
    # The grammar masks every token that would leave TGI's call format.
    country = {"type": "string", "maxLength": 12}
    parameters = {"type": "object", "properties": {"country": country}, "required": ["country"]}
    tool = {"type": "function", "function": {"name": "capital", "parameters": parameters}}
    payload = {"messages": QUESTION, "tools": [tool], "tool_choice": "required"}
    result = client.simulate_post(
        "/v1/chat/completions", json={**payload, "temperature": 0, "max_tokens": 48}
    )
    assert result.status_code == 200, result.text
    [call] = result.json["choices"][0]["message"]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == ("0", "function", "capital")
    assert set(json.loads(call["function"]["arguments"])) == {"country"}


def test_completions_with_a_seed_reproduce(client: falcon.testing.TestClient) -> None:
    payload = {"prompt": ["Once upon a time", "The sky is"], "max_tokens": 6, "seed": 7}
    first, second = (client.simulate_post("/v1/completions", json=payload).json for _ in range(2))
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]
    assert first["usage"]["completion_tokens"] == 2 * 6
