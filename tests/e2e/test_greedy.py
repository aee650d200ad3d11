"""Greedy answers through HTTP equal transformers' greedy generation, alone and 16 at once.

The reference is transformers' ``generate`` on the same GGUF file, dequantized to float32,
as the service runs it (``--dtype float32``): in bfloat16 the two implementations round
differently (other kernels, other reduction orders), so a near-tie between two tokens may
break either way and equality would test the rounding, not the serving. Prompts are
chat-templated (SmolLM2-Instruct answers a bare prompt with ``<|im_end|>`` at once); the
reference runs 32 tokens past any end-of-sequence, and the service's answer must be its
prefix, ending at 32 tokens or at an end-of-sequence token.

Sixteen concurrent requests (eight questions, twice each) spread over both Gunicorn
workers and share the engine's batches; each must still get its own greedy answer, and no
shape outside warmup's may have run.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest

from tgi_server.testing import LaunchedService, smollm2_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a tip for learning Python.",
)
NUM_NEW_TOKENS = 32


class Reference(NamedTuple):
    prompt: str  # the chat-templated text sent as ``inputs``
    prompt_ids: list[int]
    continuation_ids: list[int]  # NUM_NEW_TOKENS greedy tokens, past any EOS


@pytest.fixture(scope="module")
def references() -> Iterator[list[Reference]]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    gguf = smollm2_gguf()
    folder = str(gguf.parent)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    references = []
    with torch.no_grad():
        for question in QUESTIONS:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            output = model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=NUM_NEW_TOKENS,
                do_sample=False,
                eos_token_id=None,  # all 32 tokens, past <|im_end|>
                pad_token_id=tokenizer.eos_token_id,
            )
            continuation = output[0, len(prompt_ids) :].tolist()
            references.append(Reference(prompt, prompt_ids, continuation))
    yield references
    del model


def post(service: LaunchedService, path: str, payload: Any) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=300)
    try:
        connection.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        return json.loads(body)
    finally:
        connection.close()


def generate(service: LaunchedService, prompt: str) -> dict[str, Any]:
    parameters = {"max_new_tokens": NUM_NEW_TOKENS, "details": True}
    details: dict[str, Any] = post(
        service, "/generate", {"inputs": prompt, "parameters": parameters}
    )["details"]
    return details


def assert_greedy(details: dict[str, Any], reference: Reference) -> None:
    tokens = details["tokens"]
    ids = [token["id"] for token in tokens]
    assert ids == reference.continuation_ids[: len(ids)], reference.prompt
    if details["finish_reason"] == "length":
        assert len(ids) == NUM_NEW_TOKENS
    else:  # ended on an end-of-sequence token, which TGI marks special
        assert details["finish_reason"] == "eos_token" and tokens[-1]["special"]


def test_greedy_alone(service: LaunchedService, references: list[Reference]) -> None:
    first = references[0]
    tokenized = post(service, "/tokenize", {"inputs": first.prompt})
    assert [token["id"] for token in tokenized] == first.prompt_ids  # same prompt ids
    details = generate(service, first.prompt)
    assert_greedy(details, first)
    assert "Paris" in "".join(token["text"] for token in details["tokens"])


def test_greedy_under_16_concurrent_requests(
    service: LaunchedService, references: list[Reference]
) -> None:
    batch = [*references, *references]
    with ThreadPoolExecutor(max_workers=len(batch)) as pool:
        answers = list(pool.map(lambda ref: generate(service, ref.prompt), batch))
    for details, reference in zip(answers, batch, strict=True):
        assert_greedy(details, reference)
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    connection.request("GET", "/metrics")
    metrics = connection.getresponse().read().decode().splitlines()
    connection.close()
    assert "tgi_unwarmed_shapes 0" in metrics
