"""The official clients, unchanged, against the real service (launcher, Gunicorn, engine).

``huggingface_hub.InferenceClient`` and the ``openai`` SDK run here; the ``text-generation``
client runs in its own venv (see ``conftest.py``), driven by a script that prints JSON. Its
``chat(stream=True)`` is left out: its ``ChoiceDelta`` model requires a ``tool_calls`` key
that TGI 3's text chunks do not have (``{"role":"assistant","content":...}``), so it fails
against TGI itself; the other two clients stream chat.
Greedy answers are deterministic, so what one client gets another must get too (the OpenAI
routes sample unless ``temperature`` is 0, as in TGI). Also the seed document's first
request, as its ``curl`` line sends it.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import openai
import pytest
from huggingface_hub import InferenceClient

from tgi_server.testing import LaunchedService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTION = "What is Deep Learning?"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
SEED_BODY = '{"inputs":"What is Deep Learning?","parameters":{"max_new_tokens":32}}'


def post_json(service: LaunchedService, path: str, body: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_seed_curl_example_answers(service: LaunchedService) -> None:
    curl = shutil.which("curl")
    if curl is not None:
        done = subprocess.run(
            [curl, "-sS", f"127.0.0.1:{service.port}/generate", "-X", "POST", "-d", SEED_BODY,
             "-H", "Content-Type: application/json"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        answer = json.loads(done.stdout)
    else:
        status, answer = post_json(service, "/generate", SEED_BODY)
        assert status == 200
    assert list(answer) == ["generated_text"] and answer["generated_text"].strip()
    detailed = json.loads(SEED_BODY)
    detailed["parameters"]["details"] = True
    status, again = post_json(service, "/generate", json.dumps(detailed))
    assert status == 200 and again["generated_text"] == answer["generated_text"]  # greedy
    assert 0 < again["details"]["generated_tokens"] <= 32


def test_huggingface_hub_inference_client(service: LaunchedService) -> None:
    # An endpoint URL served by TGI is the "hf-inference" provider's case.
    client = InferenceClient(model=service.url, provider="hf-inference")
    assert client.health_check()
    info = client.get_endpoint_info()
    assert (info["max_input_tokens"], info["max_total_tokens"]) == (256, 512)
    assert info["router"] == "text-generation-router"
    output = client.text_generation(
        QUESTION, max_new_tokens=12, details=True, return_full_text=False
    )
    details = output.details
    assert details is not None and details.finish_reason in ("length", "eos_token")
    assert details.generated_tokens == len(details.tokens) <= 12
    assert "".join(t.text for t in details.tokens if not t.special) == output.generated_text
    streamed = list(
        client.text_generation(
            QUESTION, max_new_tokens=12, stream=True, details=True, return_full_text=False
        )
    )
    assert [event.index for event in streamed] == list(range(1, len(streamed) + 1))
    assert [event.token.id for event in streamed] == [t.id for t in details.tokens]
    assert streamed[-1].generated_text == output.generated_text
    assert streamed[-1].details is not None
    assert streamed[-1].details.finish_reason == details.finish_reason
    # Without return_full_text, a model with no pipeline tag answers with the prompt (TGI).
    assert client.text_generation(QUESTION, max_new_tokens=12) == QUESTION + output.generated_text

    chat = client.chat_completion(CHAT, max_tokens=24, temperature=0)
    answer = chat.choices[0].message.content
    assert answer is not None and "Paris" in answer
    assert chat.usage.completion_tokens <= 24
    chunks = list(client.chat_completion(CHAT, max_tokens=24, temperature=0, stream=True))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == answer
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_openai_sdk(service: LaunchedService) -> None:
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model="tgi",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
    )
    answer = chat.choices[0].message.content
    assert answer is not None and "Paris" in answer
    assert chat.usage is not None and chat.usage.completion_tokens <= 24
    chunks = list(
        client.chat.completions.create(
            model="tgi",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1]) == answer

    legacy = client.completions.create(model="tgi", prompt=QUESTION, max_tokens=12, temperature=0)
    text = legacy.choices[0].text
    assert text and legacy.usage is not None and legacy.usage.completion_tokens <= 12
    pieces = list(
        client.completions.create(
            model="tgi", prompt=QUESTION, max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(piece.choices[0].text for piece in pieces) == text
    assert [model.id for model in client.models.list()] == [chat.model]


TEXT_GENERATION_SCRIPT = """
import asyncio, json, sys
from text_generation import AsyncClient, Client
from text_generation.types import Message

url, question, chat_question = sys.argv[1:4]
messages = [Message(role="user", content=chat_question)]

def summary(done, stream, chat):  # what the test compares, from either client
    return {
        "generate": {"text": done.generated_text, "ids": [t.id for t in done.details.tokens],
                     "finish_reason": done.details.finish_reason.value},
        "stream": {"text": stream[-1].generated_text, "ids": [e.token.id for e in stream],
                   "finish_reason": stream[-1].details.finish_reason.value},
        "chat": chat.choices[0].message.content,
        "chat_finish_reason": chat.choices[0].finish_reason,
    }

def run_sync():
    client = Client(url, timeout=120)
    done = client.generate(question, max_new_tokens=12)
    stream = list(client.generate_stream(question, max_new_tokens=12))
    chat = client.chat(messages=messages, max_tokens=24, temperature=0)
    return summary(done, stream, chat)

async def run_async():
    client = AsyncClient(url, timeout=120)
    done = await client.generate(question, max_new_tokens=12)
    stream = [event async for event in client.generate_stream(question, max_new_tokens=12)]
    chat = await client.chat(messages=messages, max_tokens=24, temperature=0)
    return summary(done, stream, chat)

print(json.dumps({"sync": run_sync(), "async": asyncio.run(run_async())}))
"""


def test_text_generation_client(
    service: LaunchedService, client_script: Callable[..., str]
) -> None:
    output = json.loads(
        client_script(TEXT_GENERATION_SCRIPT, service.url, QUESTION, CHAT[0]["content"])
    )
    status, reference = post_json(
        service,
        "/generate",
        json.dumps({"inputs": QUESTION, "parameters": {"max_new_tokens": 12, "details": True}}),
    )
    assert status == 200
    openai_client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
    chat_answer = (
        openai_client.chat.completions.create(
            model="tgi",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=24,
            temperature=0,
        )
        .choices[0]
        .message.content
    )
    assert chat_answer is not None and "Paris" in chat_answer
    expected = {
        "text": reference["generated_text"],
        "ids": [token["id"] for token in reference["details"]["tokens"]],
        "finish_reason": reference["details"]["finish_reason"],
    }
    for flavour in ("sync", "async"):
        result = output[flavour]
        assert result["generate"] == expected, flavour
        assert result["stream"] == expected, flavour
        assert result["chat"] == chat_answer, flavour
        assert result["chat_finish_reason"] in ("length", "stop"), flavour
