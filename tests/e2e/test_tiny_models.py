"""Tiny random models with a word-level tokenizer, served by the real launcher over HTTP.

- A family with no native implementation, served through transformers: a GPT-NeoX
  (partial rotary, parallel residual: nothing of it is ours). Its greedy tokens, alone and
  three at once, equal transformers' own greedy loop on the same weights, and /info says
  which code computes the model.
- LoRA adapters (``--lora-adapters``): requests naming each of two PEFT adapters and the
  base model, in flight together, each get the greedy tokens of its own model (PEFT's
  forward for the adapters); /info and /v1/models list the adapters.
- Speculative decoding (``--speculate 3``): repetitive prompts, in flight together, get
  transformers' greedy tokens, and /metrics counts the draft tokens accepted.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest
import torch

from tgi_hpu_kernels.testing import (
    save_tiny_checkpoint,
    save_tiny_lora_adapter,
    save_word_tokenizer,
)
from tgi_server.testing import LaunchedService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPTS = ((5, 17, 33, 9), (40, 41), (7, 7, 7, 7, 7, 7), (100, 3, 64))
NUM_NEW_TOKENS = 12
EOS = 2  # the tiny configs' eos_token_id
LIMITS = (
    "--dtype", "float32",
    "--max-input-tokens", "32", "--max-total-tokens", "64",
    "--max-batch-prefill-tokens", "128", "--max-batch-size", "4",
)  # fmt: skip
BUCKETS = {"PAD_SEQUENCE_TO_MULTIPLE_OF": "32", "BATCH_BUCKET_SIZE": "4"}


class Served(NamedTuple):
    service: LaunchedService
    model: torch.nn.Module  # the base model's reference


@pytest.fixture(scope="module")
def served(
    launch: Callable[..., LaunchedService],
    stop_and_check: Callable[[LaunchedService], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("tiny-gpt-neox")
    model = save_tiny_checkpoint(folder, "gpt_neox")
    save_word_tokenizer(folder)
    service = launch(
        "fallback", "--model-id", str(folder), "--device", "cpu", limits=LIMITS, environ=BUCKETS
    )
    yield Served(service, model)
    stop_and_check(service)


def _request(service: LaunchedService, method: str, path: str, payload: Any = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    try:
        body = None if payload is None else json.dumps(payload)
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        assert response.status == 200, data
        return json.loads(data)
    finally:
        connection.close()


def _greedy_reference(model: torch.nn.Module, prompt: tuple[int, ...]) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(NUM_NEW_TOKENS):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist()


def _assert_greedy(
    served: Served,
    prompt: tuple[int, ...],
    model: torch.nn.Module | None = None,
    adapter_id: str | None = None,
) -> None:
    text = " ".join(f"t{i}" for i in prompt)
    parameters: dict[str, Any] = {"max_new_tokens": NUM_NEW_TOKENS, "details": True}
    if adapter_id is not None:
        parameters["adapter_id"] = adapter_id
    body = _request(served.service, "POST", "/generate", {"inputs": text, "parameters": parameters})
    details = body["details"]
    ids = [token["id"] for token in details["tokens"]]
    reference = _greedy_reference(model or served.model, prompt)
    if details["finish_reason"] == "length":
        assert ids == reference
    else:  # stopped at the end-of-sequence token, where transformers' greedy also chose it
        assert details["finish_reason"] == "eos_token"
        assert ids == reference[: len(ids)] and ids[-1] == EOS


def test_info_names_the_transformers_path(served: Served) -> None:
    info = _request(served.service, "GET", "/info")
    assert info["model_device_type"] == "cpu"
    assert "model: transformers GPTNeoXForCausalLM (fallback)" in info["compute_path"]


def test_greedy_alone_and_batched_equal_transformers(served: Served) -> None:
    _assert_greedy(served, PROMPTS[0])
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda prompt: _assert_greedy(served, prompt), PROMPTS[1:]))
    # the batch ran only shapes warmup knew
    connection = http.client.HTTPConnection("127.0.0.1", served.service.port, timeout=30)
    connection.request("GET", "/metrics")
    lines = connection.getresponse().read().decode().splitlines()
    connection.close()
    assert "tgi_unwarmed_shapes 0" in lines


class ServedAdapters(NamedTuple):
    served: Served
    adapters: dict[str, torch.nn.Module]  # id -> PEFT's model


@pytest.fixture(scope="module")
def with_adapters(
    launch: Callable[..., LaunchedService],
    stop_and_check: Callable[[LaunchedService], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedAdapters]:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("tiny-llama-lora")
    folder = root / "base"
    model = save_tiny_checkpoint(folder, "llama")
    save_word_tokenizer(folder)
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapters = {
        "sql": save_tiny_lora_adapter(folder, root / "sql", seed=5, r=4, target_modules=every),
        "chat": save_tiny_lora_adapter(
            folder, root / "chat", seed=6, r=2, target_modules=["q_proj", "v_proj"]
        ),
    }
    entries = ",".join(f"{name}={root / name}" for name in adapters)
    argv = ("--model-id", str(folder), "--device", "cpu", "--lora-adapters", entries)
    service = launch("lora", *argv, limits=LIMITS, environ=BUCKETS)
    yield ServedAdapters(Served(service, model), adapters)
    stop_and_check(service)


def test_adapters_are_listed(with_adapters: ServedAdapters) -> None:
    service = with_adapters.served.service
    assert _request(service, "GET", "/info")["lora_adapters"] == ["sql", "chat"]
    models = _request(service, "GET", "/v1/models")["data"]
    assert [entry["id"] for entry in models][1:] == ["sql", "chat"]


def test_each_request_gets_its_own_adapter_in_one_batch(with_adapters: ServedAdapters) -> None:
    served, adapters = with_adapters
    cases = [
        (PROMPTS[0], None, None),
        (PROMPTS[1], adapters["sql"], "sql"),
        (PROMPTS[2], adapters["chat"], "chat"),
        (PROMPTS[3], adapters["sql"], "sql"),
    ]
    # the adapters change the answers: matching them is not matching the base model
    for prompt, model, _ in cases[1:3]:
        assert _greedy_reference(model, prompt) != _greedy_reference(served.model, prompt)
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        list(pool.map(lambda case: _assert_greedy(served, *case), cases))


@pytest.fixture(scope="module")
def speculating(
    launch: Callable[..., LaunchedService],
    stop_and_check: Callable[[LaunchedService], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("tiny-llama-speculate")
    model = save_tiny_checkpoint(folder, "llama")
    save_word_tokenizer(folder)
    argv = ("--model-id", str(folder), "--device", "cpu", "--speculate", "3")
    service = launch("speculate", *argv, limits=LIMITS, environ=BUCKETS)
    yield Served(service, model)
    stop_and_check(service)


def test_speculation_keeps_greedy_answers_and_counts_what_it_skipped(speculating: Served) -> None:
    repetitive = ((5, 6, 7, 8, 5, 6, 7, 8, 5, 6), (40, 41, 40, 41, 40), (3, 9, 3, 9, 3))
    with ThreadPoolExecutor(max_workers=len(repetitive)) as pool:
        list(pool.map(lambda prompt: _assert_greedy(speculating, prompt), repetitive))
    connection = http.client.HTTPConnection("127.0.0.1", speculating.service.port, timeout=30)
    connection.request("GET", "/metrics")
    lines = connection.getresponse().read().decode().splitlines()
    connection.close()
    assert 'tgi_request_skipped_tokens_bucket{le="3.0"}' in " ".join(lines)
    skipped = next(line for line in lines if line.startswith("tgi_request_skipped_tokens_sum"))
    assert float(skipped.split()[-1]) > 0  # drafts were accepted: the greedy check means it
