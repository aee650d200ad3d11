"""Tiny random models with a word-level tokenizer, served by the real launcher over HTTP.

- A family with no native implementation, served through transformers: a GPT-NeoX
  (partial rotary, parallel residual: nothing of it is ours). Its greedy tokens, alone and
  three at once, equal transformers' own greedy loop on the same weights, and /info says
  which code computes the model.
- LoRA adapters (``--lora-adapters``): requests naming each of two PEFT adapters and the
  base model, in flight together, each get the greedy tokens of its own model (PEFT's
  forward for the adapters); /info and /v1/models list the adapters.
- Speculative decoding (``--speculate 3``): repetitive prompts, in flight together, get
  transformers' greedy tokens, and /metrics counts the draft tokens accepted; the same with
  a Medusa model id (its heads draft; ``--speculate`` unset takes their number).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest
import torch
from safetensors.torch import save_file

from tgi_hpu_kernels.testing import (
    greedy_reference,
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
    reference = greedy_reference(model or served.model, prompt, NUM_NEW_TOKENS)
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
        ours, base = (greedy_reference(m, prompt, NUM_NEW_TOKENS) for m in (model, served.model))
        assert ours != base
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
    skipped = _skipped_tokens(speculating.service)
    assert 'tgi_request_skipped_tokens_bucket{le="3.0"}' in skipped
    total = skipped.split("tgi_request_skipped_tokens_sum ")[1].split()[0]
    assert float(total) > 0  # drafts were accepted: the greedy check means something


def _skipped_tokens(service: LaunchedService) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    connection.request("GET", "/metrics")
    lines = connection.getresponse().read().decode().splitlines()
    connection.close()
    return " ".join(line for line in lines if line.startswith("tgi_request_skipped_tokens"))


@pytest.fixture(scope="module")
def medusa(
    launch: Callable[..., LaunchedService],
    stop_and_check: Callable[[LaunchedService], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tiny-llama-medusa")
    base, heads = root / "base", root / "medusa"
    model = save_tiny_checkpoint(base, "llama")
    heads.mkdir()
    save_word_tokenizer(heads)  # the server reads the tokenizer of the model id it is given
    hidden = model.lm_head.weight.shape[1]
    weights = {  # two heads that guess the model's own next token again
        name: tensor
        for head in range(2)
        for name, tensor in {
            f"{head}.0.linear.weight": torch.zeros(hidden, hidden),
            f"{head}.0.linear.bias": torch.zeros(hidden),
            f"{head}.1.weight": model.lm_head.weight.detach().clone(),
        }.items()
    }
    save_file(weights, str(heads / "medusa_lm_head.safetensors"))
    config = {"medusa_num_heads": 2, "medusa_num_layers": 1, "base_model_name_or_path": str(base)}
    (heads / "config.json").write_text(json.dumps(config))
    service = launch(
        "medusa", "--model-id", str(heads), "--device", "cpu", limits=LIMITS, environ=BUCKETS
    )
    yield Served(service, model)
    stop_and_check(service)


def test_a_medusa_model_drafts_with_its_heads_and_keeps_greedy_answers(medusa: Served) -> None:
    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        list(pool.map(lambda prompt: _assert_greedy(medusa, prompt), PROMPTS))
    assert 'tgi_request_skipped_tokens_bucket{le="2.0"}' in _skipped_tokens(medusa.service)
