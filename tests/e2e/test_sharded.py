"""``--sharded true --num-shard 3`` through the real launcher, on the CPU (gloo).

The embedded SmolLM2-135M has 9 attention heads and 3 KV heads, so 3 shards hold 3 and 1
each. Greedy answers to chat-templated prompts must equal the unsharded service's (the
session's ``service``), token for token; SIGTERM then exits 0 and stops every process the
launcher started, the engine's shard processes included.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from tgi_server.testing import LaunchedService, free_port, is_running, process_tree, smollm2_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTIONS = ("What is the capital of France?", "List three prime numbers.")
NUM_NEW_TOKENS = 16


def _prompts() -> list[str]:
    transformers = pytest.importorskip("transformers")
    gguf = smollm2_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        for question in QUESTIONS
    ]


def _greedy_ids(service: LaunchedService, prompt: str) -> list[int]:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=300)
    payload = {"inputs": prompt, "parameters": {"max_new_tokens": NUM_NEW_TOKENS, "details": True}}
    try:
        connection.request(
            "POST", "/generate", json.dumps(payload), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        body: Any = json.loads(response.read())
        assert response.status == 200, body
    finally:
        connection.close()
    return [token["id"] for token in body["details"]["tokens"]]


def _is_shard(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"tgi_server.engine.shard" in command


def test_three_shards_answer_as_one(launch: Any, service: LaunchedService) -> None:
    prompts = _prompts()
    expected = [_greedy_ids(service, prompt) for prompt in prompts]
    sharded = launch(
        "sharded",
        "--sharded", "true", "--num-shard", "3",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
    )  # fmt: skip
    tree = process_tree(sharded.pid)
    assert len([pid for pid in tree if _is_shard(pid)]) == 2  # ranks 1 and 2
    assert [_greedy_ids(sharded, prompt) for prompt in prompts] == expected
    status = sharded.stop()
    survivors = [pid for pid in tree if is_running(pid)]
    assert (status, survivors) == (0, []), sharded.log()[-4000:]
