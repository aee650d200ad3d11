"""Benchmark workloads: seeded, download-free prompts of the lengths each profile promises."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tgi_core.testing import smollm2_gguf
from tgi_server.benchmark.profiles import (
    MULTI_TURN_TURNS,
    PROFILES,
    BenchRequest,
    make_requests,
    render_chatml,
    render_raw,
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """SmolLM2's own tokenizer and chat template, from the embedded GGUF."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module")
def smollm2(tokenizer: Any) -> tuple[Callable[[str], int], Callable[[object], str]]:
    """SmolLM2's length of a text and chat template rendering."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def render(messages: object) -> str:
        chat = [{"role": role, "content": content} for role, content in messages]  # type: ignore[attr-defined]
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))

    return count, render


def test_same_seed_same_requests_other_seed_other_requests() -> None:
    for profile in PROFILES:
        first = make_requests(profile, 8, seed=7)
        assert first == make_requests(profile, 8, seed=7)
        assert first != make_requests(profile, 8, seed=8)
        assert len({request.prompt for request in first}) == 8


def test_output_lengths_per_profile_and_override() -> None:
    defaults = {name: make_requests(name, 1)[0].max_new_tokens for name in PROFILES}
    assert defaults == {
        "chat": 128, "code": 256, "classification": 10, "fixed-length": 128, "multi-turn": 64
    }  # fmt: skip
    assert make_requests("chat", 2, max_new_tokens=64)[1].max_new_tokens == 64


def test_renderings() -> None:
    messages = (("system", "Be brief."), ("user", "Hi"))
    assert render_chatml(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_raw(messages) == "Be brief.\nHi"
    [request] = make_requests("fixed-length", 1, render=render_raw, input_tokens=20)
    assert request.prompt == request.messages[0][1]
    assert len(request.prompt.split()) == 20  # one token per word without a tokenizer


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        make_requests("summarization", 1)
    with pytest.raises(ValueError, match="at least 1"):
        make_requests("chat", 0)
    with pytest.raises(ValueError, match="at least 1"):
        make_requests("multi-turn", 8, wave=0)


def _by_conversation(requests: list[BenchRequest]) -> dict[str, list[int]]:
    """Request indices per conversation (named by its first user turn), in sending order."""
    conversations: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        conversations.setdefault(request.messages[1][1], []).append(index)
    return conversations


def test_multi_turn_histories_share_the_system_prompt_and_grow() -> None:
    requests = make_requests("multi-turn", 24, wave=12)
    [system] = {request.messages[0] for request in requests}
    assert system[0] == "system"
    assert 150 <= len(system[1].split()) <= 300  # one token per word, punctuation aside
    conversations = _by_conversation(requests)
    assert len(conversations) == 6  # 12 requests per wave, 4 turns each
    for indices in conversations.values():
        turns = [requests[index] for index in indices]
        assert [len(turn.messages) for turn in turns] == [2, 4, 6, 8]  # system + 2t + 1
        for earlier, later in itertools.pairwise(turns):
            assert later.messages[: len(earlier.messages)] == earlier.messages
            assert later.messages[len(earlier.messages)][0] == "assistant"
            assert later.prompt.startswith(earlier.prompt.removesuffix("<|im_start|>assistant\n"))
    other_seed = make_requests("multi-turn", 24, wave=12, seed=1)
    assert other_seed[0].messages[0] != system


@pytest.mark.parametrize(
    ("num_prompts", "wave", "gap", "turns"),
    [(32, 16, 4, [MULTI_TURN_TURNS] * 8), (10, 10, 3, [3, 3, 4])],
)
def test_multi_turn_waves_keep_turns_apart_and_whole(
    num_prompts: int, wave: int, gap: int, turns: list[int]
) -> None:
    requests = make_requests("multi-turn", num_prompts, wave=wave)
    assert len(requests) == num_prompts
    conversations = _by_conversation(requests)
    assert sorted(len(indices) for indices in conversations.values()) == turns
    for indices in conversations.values():
        # turn t + 1 exactly `gap` (conversations per wave) after turn t, in the same wave
        assert all(later - earlier == gap for earlier, later in itertools.pairwise(indices))
        assert len({index // wave for index in indices}) == 1
    # every wave opens with its conversations' first turns
    assert all(len(requests[start].messages) == 2 for start in range(0, num_prompts, wave))


@pytest.mark.parametrize(
    ("profile", "low", "high"),
    [("chat", 50, 200), ("code", 100, 300)],
)
def test_token_ranges_on_smollm2(
    smollm2: tuple[Callable[[str], int], Callable[[object], str]],
    profile: str,
    low: int,
    high: int,
) -> None:
    count, _ = smollm2
    lengths = [count(r.messages[-1][1]) for r in make_requests(profile, 40, seed=3)]
    assert low <= min(lengths)
    assert max(lengths) <= high
    assert max(lengths) - min(lengths) > (high - low) / 3  # a spread, not one length


def test_lengths_are_exact_with_a_tokenizer(
    smollm2: tuple[Callable[[str], int], Callable[[object], str]],
) -> None:
    count, render = smollm2
    fixed = make_requests(
        "fixed-length", 4, input_tokens=300, render=render, count_tokens=count, seed=1
    )
    assert [count(r.prompt) for r in fixed] == [300] * 4  # template included
    long = make_requests("classification", 3, render=render, count_tokens=count)
    assert [count(r.prompt) for r in long] == [500] * 3
    assert long[0].prompt.startswith("<|im_start|>system\n")
    # Without a tokenizer the estimate is close on this vocabulary.
    estimated = make_requests("classification", 3, render=render)
    assert all(480 <= count(r.prompt) <= 560 for r in estimated)


def test_multi_turn_prompts_are_token_prefixes_on_smollm2(
    tokenizer: Any, smollm2: tuple[Callable[[str], int], Callable[[object], str]]
) -> None:
    """What a prefix cache matches: each turn's tokens begin with the previous turn's."""
    count, render = smollm2
    requests = make_requests("multi-turn", 8, render=render)
    assert 150 <= count(requests[0].messages[0][1]) <= 300
    for indices in _by_conversation(requests).values():
        ids = [tokenizer.encode(requests[i].prompt, add_special_tokens=False) for i in indices]
        for earlier, later in itertools.pairwise(ids):
            assert later[: len(earlier)] == earlier
            assert len(later) - len(earlier) > 40  # an answer and a question more
