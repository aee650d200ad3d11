"""Benchmark workloads: seeded, download-free prompts of the lengths each profile promises."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tgi_core.testing import smollm2_gguf
from tgi_server.benchmark.profiles import (
    PROFILES,
    make_requests,
    render_chatml,
    render_raw,
)


@pytest.fixture(scope="module")
def smollm2() -> tuple[Callable[[str], int], Callable[[object], str]]:
    """SmolLM2's own tokenizer (length of a text) and chat template, from the embedded GGUF."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

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
    assert defaults == {"chat": 128, "code": 256, "classification": 10, "fixed-length": 128}
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
