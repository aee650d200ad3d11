"""Benchmark workloads: deterministic prompts in the spirit of inference-benchmarker's profiles.

Every prompt is built from a seeded ``random.Random`` over a built-in vocabulary of common
English words (each one BPE token in most vocabularies), so two runs with the same seed send the
same requests to every server and nothing is downloaded. Profiles:

- ``chat``: short chat turns, ~50-200 input tokens, 128 output tokens;
- ``code``: a code task over a generated snippet, ~100-300 input tokens, 256 output tokens;
- ``classification``: a long review (~500 tokens) to label, 10 output tokens;
- ``fixed-length``: given input and output token counts.

Token counts are estimates unless a ``count_tokens`` callable (a real tokenizer) is passed, in
which case ``fixed-length`` and ``classification`` are fitted to it exactly. How prompts travel
over HTTP (routes, payloads) lives in ``client.py``, not here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Message = tuple[str, str]  # (role, content)
Renderer = Callable[[Sequence[Message]], str]
TokenCounter = Callable[[str], int]


def _vocab(text: str, separator: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(separator))


_NOUNS = _vocab(
    "house car tree river city garden window table book letter school market water light road "
    "bridge field story friend family teacher student doctor farmer engine music movie paper "
    "phone computer system process result problem answer question picture color forest island "
    "mountain ocean village station kitchen office library museum hospital company server "
    "network program project report budget meeting plan team customer order price product"
)
_VERBS = _vocab(
    "finds keeps moves holds shows builds opens reads writes brings takes makes changes helps "
    "starts turns follows leaves meets carries watches checks sends fixes cleans paints covers"
)
_ADJECTIVES = _vocab(
    "small large old new quiet bright dark warm cold green blue red simple strange quick slow "
    "heavy light early late happy busy clean empty full short long young modern local public"
)
_PREPOSITIONS = _vocab("near behind under over after before with without across inside")
_TOPICS = _vocab(
    "the water cycle|how a bridge carries weight|why the sky is blue|how a computer stores "
    "numbers|the history of the printing press|how plants make food|what a budget is for|how "
    "trains stay on the track|why people learn music|how a library sorts its books",
    "|",
)
_CHAT_OPENERS = (
    "Can you explain {topic} in simple terms?",
    "I am preparing a short talk about {topic}. What should I say first?",
    "Please summarise the following notes and tell me what they say about {topic}.",
    "My friend asked me about {topic} and I was not sure. Can you help?",
)
_LABELS = ("positive", "negative", "neutral")

# Every word above is one token (with its leading space) in SmolLM2's BPE vocabulary.
TOKENS_PER_WORD = 1.0


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload: the chat messages and the same turn rendered as text."""

    messages: tuple[Message, ...]
    prompt: str
    max_new_tokens: int


@dataclass(frozen=True)
class Profile:
    """A named workload: how to build one conversation and how many tokens to ask for."""

    name: str
    description: str
    max_new_tokens: int
    build: Callable[[random.Random, int, TokenCounter | None], list[Message]]


def render_chatml(messages: Sequence[Message]) -> str:
    """The ChatML rendering (SmolLM2, Qwen, ...) ending with an open assistant turn."""
    turns = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)
    return f"{turns}<|im_start|>assistant\n"


def render_raw(messages: Sequence[Message]) -> str:
    """The message contents alone, one per line (for base models and fixed-length runs)."""
    return "\n".join(content for _, content in messages)


def _sentence(rng: random.Random) -> str:
    adj1, adj2 = rng.choice(_ADJECTIVES), rng.choice(_ADJECTIVES)
    noun1, noun2, noun3 = (rng.choice(_NOUNS) for _ in range(3))
    return (
        f"The {adj1} {noun1} {rng.choice(_VERBS)} the {noun2} "
        f"{rng.choice(_PREPOSITIONS)} the {adj2} {noun3}."
    )


def _sentences(rng: random.Random, num_words: int) -> str:
    """Filler sentences of about ``num_words`` words (each sentence has 10)."""
    return " ".join(_sentence(rng) for _ in range(max(1, round(num_words / 10))))


def _words(rng: random.Random, num_words: int) -> list[str]:
    vocabulary = _NOUNS + _VERBS + _ADJECTIVES + _PREPOSITIONS
    return [rng.choice(vocabulary) for _ in range(num_words)]


def fit_text(
    rng: random.Random,
    num_tokens: int,
    count_tokens: TokenCounter | None,
    wrap: Callable[[str], str] = lambda text: text,
) -> str:
    """Words whose ``wrap``-ped text counts ``num_tokens`` tokens (estimated without a counter).

    With a counter the word count is corrected proportionally, then one word at a time, so the
    result is exact whenever a one-word step changes the count by one token.
    """
    pool = _words(rng, 2 * num_tokens + 16)
    num_words = max(1, round(num_tokens / TOKENS_PER_WORD))
    if count_tokens is None:
        return " ".join(pool[:num_words])
    for _ in range(4):  # proportional steps first: tokenizing is cheap but not free
        counted = count_tokens(wrap(" ".join(pool[:num_words])))
        if counted == num_tokens:
            break
        num_words = max(1, min(len(pool), round(num_words * num_tokens / max(counted, 1))))
    while num_words > 1 and count_tokens(wrap(" ".join(pool[:num_words]))) > num_tokens:
        num_words -= 1
    while (
        num_words < len(pool) and count_tokens(wrap(" ".join(pool[: num_words + 1]))) <= num_tokens
    ):
        num_words += 1
    return " ".join(pool[:num_words])


def _chat(rng: random.Random, _num_tokens: int, _count: TokenCounter | None) -> list[Message]:
    opener = rng.choice(_CHAT_OPENERS).format(topic=rng.choice(_TOPICS))
    notes = _sentences(rng, rng.randint(40, 150))
    return [("user", f"{opener}\n\n{notes}")]


def _code(rng: random.Random, _num_tokens: int, _count: TokenCounter | None) -> list[Message]:
    noun, verb = rng.choice(_NOUNS), rng.choice(_VERBS).removesuffix("s")
    lines = [f"def {verb}_{noun}s({noun}s, limit={rng.randint(2, 99)}):", "    result = []"]
    for _ in range(rng.randint(2, 7)):  # ~30 tokens per branch
        field, other = rng.choice(_NOUNS), rng.choice(_ADJECTIVES)
        lines.append(f"    if {noun}s and {noun}s[0].{field} == '{other}':")
        lines.append(f"        result.append({noun}s.pop(0).{field})")
    lines.append("    return result[:limit]")
    snippet = "\n".join(lines)
    task = (
        f"Here is a Python function. Rewrite it so that it runs in linear time, add type hints "
        f"and a docstring, and explain what changed.\n\n```python\n{snippet}\n```"
    )
    return [("user", task)]


def _classification(
    rng: random.Random, num_tokens: int, count_tokens: TokenCounter | None
) -> list[Message]:
    instruction = (
        "Classify the sentiment of the following review as "
        f"{', '.join(_LABELS)}. Answer with one word.\n\nReview: "
    )
    review = fit_text(rng, num_tokens, count_tokens, lambda text: instruction + text)
    return [("user", instruction + review)]


def _fixed_length(
    rng: random.Random, num_tokens: int, count_tokens: TokenCounter | None
) -> list[Message]:
    return [("user", fit_text(rng, num_tokens, count_tokens))]


PROFILES: dict[str, Profile] = {
    "chat": Profile("chat", "short chat turns, ~50-200 input tokens", 128, _chat),
    "code": Profile("code", "rewrite a generated function, ~100-300 input tokens", 256, _code),
    "classification": Profile("classification", "label a ~500-token review", 10, _classification),
    "fixed-length": Profile("fixed-length", "given input and output lengths", 128, _fixed_length),
}
DEFAULT_INPUT_TOKENS = {"classification": 500, "fixed-length": 256}


def make_requests(
    profile: str,
    num_prompts: int,
    *,
    seed: int = 0,
    max_new_tokens: int | None = None,
    input_tokens: int | None = None,
    render: Renderer = render_chatml,
    count_tokens: TokenCounter | None = None,
) -> list[BenchRequest]:
    """``num_prompts`` requests of ``profile``, identical for identical arguments.

    ``input_tokens`` sets the length of ``classification`` and ``fixed-length`` inputs;
    ``count_tokens`` (a real tokenizer's length) makes them exact on the rendered prompt.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if num_prompts < 1:
        raise ValueError("num_prompts must be at least 1")
    spec = PROFILES[profile]
    num_tokens = input_tokens or DEFAULT_INPUT_TOKENS.get(profile, 0)
    counter = None if count_tokens is None else _counter_on_rendered(count_tokens, render)
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        messages = tuple(spec.build(rng, num_tokens, counter))
        requests.append(
            BenchRequest(messages, render(messages), max_new_tokens or spec.max_new_tokens)
        )
    return requests


def _counter_on_rendered(count_tokens: TokenCounter, render: Renderer) -> TokenCounter:
    """A counter of the whole rendered prompt, so fitted lengths include the template."""
    return lambda content: count_tokens(render([("user", content)]))
