"""Benchmark workloads: deterministic prompts in the spirit of inference-benchmarker's profiles.

Every prompt is built from a seeded ``random.Random`` over a built-in vocabulary of common
English words (each one BPE token in most vocabularies), so two runs with the same seed send the
same requests to every server and nothing is downloaded. Profiles:

- ``chat``: short chat turns, ~50-200 input tokens, 128 output tokens;
- ``code``: a code task over a generated snippet, ~100-300 input tokens, 256 output tokens;
- ``classification``: a long review (~500 tokens) to label, 10 output tokens;
- ``fixed-length``: given input and output token counts;
- ``multi-turn``: chats of 4 turns sharing one ~240-token system prompt, each turn sent with
  the whole history before it (system prompt, earlier user turns, fixed assistant answers), so
  that a prefix cache can serve all but the newest turn (issue #13).

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
_FOLLOW_UPS = (
    "Thank you. What does that mean for the {noun}?",
    "I see. Could you say more about the {noun}, with an example?",
    "That helps. How would you explain the {noun} to a child?",
    "Good. What is the most common mistake people make with the {noun}?",
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
    # User turns per conversation: with more than one, ``build`` gives the whole conversation
    # and each turn becomes one request carrying the history before it.
    turns: int = 1


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


MULTI_TURN_TURNS = 4


def _system_prompt(rng: random.Random) -> Message:
    company = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    rules = _sentences(rng, 200)
    return ("system", f"You are the helpful assistant of the {company} company. Answer "
                      f"briefly and keep these notes in mind.\n\n{rules}")  # fmt: skip


def _conversation(
    rng: random.Random, _num_tokens: int, _count: TokenCounter | None
) -> list[Message]:
    """``MULTI_TURN_TURNS`` user turns with a fixed assistant answer between two of them."""
    opener = rng.choice(_CHAT_OPENERS).format(topic=rng.choice(_TOPICS))
    messages = [("user", f"{opener}\n\n{_sentences(rng, rng.randint(20, 60))}")]
    for _ in range(MULTI_TURN_TURNS - 1):
        follow_up = rng.choice(_FOLLOW_UPS).format(noun=rng.choice(_NOUNS))
        messages.append(("assistant", _sentences(rng, rng.randint(30, 60))))
        messages.append(("user", f"{follow_up} {_sentences(rng, rng.randint(10, 30))}"))
    return messages


PROFILES: dict[str, Profile] = {
    "chat": Profile("chat", "short chat turns, ~50-200 input tokens", 128, _chat),
    "code": Profile("code", "rewrite a generated function, ~100-300 input tokens", 256, _code),
    "classification": Profile("classification", "label a ~500-token review", 10, _classification),
    "fixed-length": Profile("fixed-length", "given input and output lengths", 128, _fixed_length),
    "multi-turn": Profile(
        "multi-turn",
        f"{MULTI_TURN_TURNS}-turn chats, one shared system prompt, ~300-650 input tokens",
        64,
        _conversation,
        turns=MULTI_TURN_TURNS,
    ),
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
    wave: int | None = None,
) -> list[BenchRequest]:
    """``num_prompts`` requests of ``profile``, identical for identical arguments.

    ``input_tokens`` sets the length of ``classification`` and ``fixed-length`` inputs;
    ``count_tokens`` (a real tokenizer's length) makes them exact on the rendered prompt.
    ``wave`` matters to multi-turn profiles only (see ``_turns``): every ``wave`` requests
    start new conversations; give a load level's request count, so that each level sends
    whole conversations of its own (default: one wave of ``num_prompts``).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if num_prompts < 1 or (wave is not None and wave < 1):
        raise ValueError("num_prompts and wave must be at least 1")
    spec = PROFILES[profile]
    num_tokens = input_tokens or DEFAULT_INPUT_TOKENS.get(profile, 0)
    counter = None if count_tokens is None else _counter_on_rendered(count_tokens, render)
    rng = random.Random(seed)
    if spec.turns > 1:
        conversations = _turns(rng, spec, num_prompts, wave or num_prompts)
    else:
        conversations = [tuple(spec.build(rng, num_tokens, counter)) for _ in range(num_prompts)]
    max_new = max_new_tokens or spec.max_new_tokens
    return [BenchRequest(messages, render(messages), max_new) for messages in conversations]


def conversations_per_wave(wave: int, turns: int = MULTI_TURN_TURNS) -> int:
    """How many conversations a wave of ``wave`` multi-turn requests holds."""
    return -(-wave // turns)


def _turns(
    rng: random.Random, spec: Profile, num_prompts: int, wave: int
) -> list[tuple[Message, ...]]:
    """Each turn of multi-turn conversations as the history it is sent with, in sending order.

    One system prompt for the whole run. Each wave holds ``C = conversations_per_wave(wave)``
    new conversations, turn-major: every conversation's turn 0, then every turn 1, ... so a
    conversation's turn t + 1 comes exactly C requests after its turn t. With N <= C
    closed-loop clients, the N - 1 clients other than turn t's can start those C requests
    only if one of them ends a request started after turn t: unless a later request overtakes
    it (equal output lengths, EOS ignored, make that rare), turn t has ended first.
    """
    system = _system_prompt(rng)
    histories: list[tuple[Message, ...]] = []
    for start in range(0, num_prompts, wave):
        size = min(wave, num_prompts - start)
        num_conversations = conversations_per_wave(size, spec.turns)
        chats = [spec.build(rng, 0, None) for _ in range(num_conversations)]
        for index in range(size):
            turn, chat = divmod(index, num_conversations)
            histories.append((system, *chats[chat][: 2 * turn + 1]))
    return histories


def _counter_on_rendered(count_tokens: TokenCounter, render: Renderer) -> TokenCounter:
    """A counter of the whole rendered prompt, so fitted lengths include the template."""
    return lambda content: count_tokens(render([("user", content)]))
