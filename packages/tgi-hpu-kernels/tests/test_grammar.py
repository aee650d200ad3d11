"""Grammar-constrained generation through ``TorchModelRunner``: real SmolLM2 (byte-level BPE)
and a tiny random Llama with a sentencepiece byte-fallback tokenizer.

Every constrained output must match its regex in full and end with EOS; unconstrained
neighbours must not notice; a recompute after a preemption must continue the same text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from outlines_core.json_schema import build_regex_from_schema
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_core.testing import smollm2_tokenizer
from tgi_core.tokenization import Tokenizer, token_bytes
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import save_tiny_checkpoint

BLOCK_SIZE = 16
MAX_SEQ_LEN = 512
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
PERSON_REGEX = build_regex_from_schema(json.dumps(PERSON))
SAMPLED = {"do_sample": True, "temperature": 1.5, "top_k": 40}


@dataclass
class Generated:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_token_ids: list[list[int]] = field(default_factory=list)


def _generate(
    runner: TorchModelRunner,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    *,
    max_new_tokens: int,
    first_request_id: int,
    generated: Sequence[Sequence[int]] | None = None,
) -> list[Generated]:
    """Prefill ``prompts`` (+ ``generated``: a recompute), then decode each until EOS or
    ``max_new_tokens`` new tokens; finished sequences are released as the scheduler would."""
    before = generated or [()] * len(prompts)
    history = [list(p) + list(g) for p, g in zip(prompts, before, strict=True)]
    per_seq = MAX_SEQ_LEN // BLOCK_SIZE
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(prompts))]
    request_ids = [first_request_id + i for i in range(len(prompts))]
    items = tuple(
        PrefillItem(s, tuple(h), len(p), 0, t, sp)
        for s, h, p, t, sp in zip(request_ids, history, prompts, tables, params, strict=True)
    )
    plan = StepPlan(0, PrefillShape(len(items), max(map(len, history))), prefill=items)
    results = [Generated() for _ in prompts]
    active = list(range(len(prompts)))
    for step in range(1, max_new_tokens + 1):
        for i, output in zip(active, runner.execute(plan).outputs, strict=True):
            results[i].token_ids.append(output.token_id)
            results[i].logprobs.append(output.logprob)
            results[i].top_token_ids.append([t.token_id for t in output.top_tokens])
            history[i].append(output.token_id)
        done = [i for i in active if history[i][-1] in runner.eos_token_ids]
        active = [i for i in active if i not in done and step < max_new_tokens]
        released = tuple(request_ids[i] for i in done)
        decode = tuple(
            DecodeItem(request_ids[i], history[i][-1], len(history[i]) - 1, tables[i])
            for i in active
        )
        plan = StepPlan(step, DecodeShape(len(decode), per_seq), decode=decode, released=released)
        if not active:
            break
    leftover = tuple(
        s for i, s in enumerate(request_ids) if history[i][-1] not in runner.eos_token_ids
    )
    runner.execute(StepPlan(max_new_tokens + 1, None, released=plan.released + leftover))
    return results


def _text(tokenizer: Tokenizer, result: Generated, eos_ids: Sequence[int]) -> str:
    assert result.token_ids[-1] in eos_ids, "a constrained generation must end with EOS"
    return tokenizer.decode(result.token_ids[:-1])


def _check_person(text: str) -> None:
    person = json.loads(text)
    assert set(person) == {"name", "age"}, text
    assert isinstance(person["name"], str) and len(person["name"]) <= 20, text
    assert isinstance(person["age"], int) and not isinstance(person["age"], bool), text


# -- SmolLM2 (byte-level BPE) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> tuple[TorchModelRunner, Tokenizer]:
    tokenizer = smollm2_tokenizer()
    settings = RunnerSettings(
        dtype="float32", device="cpu", block_size=BLOCK_SIZE, max_total_tokens=MAX_SEQ_LEN
    )
    runner = TorchModelRunner(
        settings,
        device=CpuDevice(),
        num_kv_blocks=8 * MAX_SEQ_LEN // BLOCK_SIZE,
        token_bytes=token_bytes(tokenizer),
        eos_token_ids=tokenizer.eos_token_ids,
    )
    return runner, tokenizer


def _chat(tokenizer: Tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}])
    return tokenizer.encode(text, add_special_tokens=False)


PERSON_QUESTION = "Describe a person as a JSON object with a name and an age."


@pytest.mark.slow  # several SmolLM2 generations: 5-25 s on a shared 2-core CPU
def test_json_schema_greedy_and_sampled_give_valid_json_then_eos(smollm2) -> None:
    runner, tokenizer = smollm2
    prompt = _chat(tokenizer, PERSON_QUESTION)
    params = [
        SamplingParams(grammar=PERSON_REGEX),
        *(SamplingParams(grammar=PERSON_REGEX, seed=seed, **SAMPLED) for seed in range(3)),
    ]
    results = _generate(runner, [prompt] * 4, params, max_new_tokens=80, first_request_id=1)
    texts = [_text(tokenizer, r, runner.eos_token_ids) for r in results]
    for text in texts:
        assert re.fullmatch(PERSON_REGEX, text), text
        _check_person(text)
    assert len(set(texts)) > 1  # sampling did sample


def test_regex_choice_gives_one_alternative_then_eos_with_masked_logprobs(smollm2) -> None:
    runner, tokenizer = smollm2
    prompt = _chat(tokenizer, "Is the sky blue? Answer yes or no.")
    params = SamplingParams(grammar="(yes|no)", top_n_tokens=5)
    [result] = _generate(runner, [prompt], [params], max_new_tokens=10, first_request_id=10)
    assert _text(tokenizer, result, runner.eos_token_ids) in ("yes", "no")
    # TGI's logprobs come from the masked scores: at the end only EOS is left, with p = 1
    assert result.logprobs[-1] == 0.0
    assert result.top_token_ids[-1] == [result.token_ids[-1]]
    # every top token of every step continues the grammar (the others are -inf, left out)
    for step, top_ids in enumerate(result.top_token_ids):
        before = result.token_ids[:step]
        for token_id in top_ids:
            text = tokenizer.decode([*before, token_id], skip_special_tokens=True)
            if token_id in runner.eos_token_ids:
                assert text in ("yes", "no")
            else:
                assert "yes".startswith(text) or "no".startswith(text), text


@pytest.mark.slow  # several SmolLM2 generations: 5-25 s on a shared 2-core CPU
def test_unconstrained_neighbours_get_the_same_tokens(smollm2) -> None:
    runner, tokenizer = smollm2
    prompts = [_chat(tokenizer, q) for q in ("Name a fruit.", "What is 2 + 2?")]
    free = [SamplingParams(), SamplingParams(seed=7, **SAMPLED)]
    alone = _generate(runner, prompts, free, max_new_tokens=12, first_request_id=20)
    person = _chat(tokenizer, PERSON_QUESTION)
    mixed = _generate(
        runner,
        [prompts[0], person, prompts[1], person],
        [free[0], SamplingParams(grammar=PERSON_REGEX), free[1], SamplingParams(grammar="no")],
        max_new_tokens=12,
        first_request_id=30,
    )
    assert [mixed[0].token_ids, mixed[2].token_ids] == [r.token_ids for r in alone]
    assert mixed[0].logprobs == pytest.approx(alone[0].logprobs, abs=1e-5)
    assert mixed[2].logprobs == pytest.approx(alone[1].logprobs, abs=1e-5)
    assert tokenizer.decode(mixed[3].token_ids) == "no<|im_end|>"


@pytest.mark.slow  # several SmolLM2 generations: 5-25 s on a shared 2-core CPU
def test_recompute_after_preemption_continues_the_grammar(smollm2) -> None:
    runner, tokenizer = smollm2
    prompt = _chat(tokenizer, PERSON_QUESTION)
    params = SamplingParams(grammar=PERSON_REGEX, seed=1, **SAMPLED)
    [whole] = _generate(runner, [prompt], [params], max_new_tokens=80, first_request_id=40)
    [head] = _generate(runner, [prompt], [params], max_new_tokens=6, first_request_id=41)
    assert head.token_ids == whole.token_ids[:6]
    [tail] = _generate(
        runner,
        [prompt],
        [params],
        max_new_tokens=80,
        first_request_id=42,
        generated=[head.token_ids],
    )
    assert head.token_ids + tail.token_ids == whole.token_ids
    _check_person(_text(tokenizer, whole, runner.eos_token_ids))


# -- tiny random Llama, sentencepiece byte fallback ----------------------------------------


def _byte_fallback_tokenizer() -> Tokenizer:
    """Llama-style: <unk> <s> </s>, 256 byte tokens, a few characters and pieces."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{byte:02X}>": 3 + byte for byte in range(256)})
    for token in [
        *'{}":, abcdefghijklmnoprstuwy',
        "\u2581",
        "\u2581t",
        "es",
        "\u2581n",
        "\u2581no",
    ]:
        vocab.setdefault(token, len(vocab))
    merges = [("\u2581", "t"), ("e", "s"), ("\u2581", "n"), ("\u2581n", "o")]
    backend = Backend(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[TorchModelRunner, Tokenizer]:
    tokenizer = _byte_fallback_tokenizer()
    folder: Path = tmp_path_factory.mktemp("tiny-llama-sp")
    # 320 embedding rows > the tokenizer's ~300 ids: the extra ids must never be chosen
    save_tiny_checkpoint(folder, "llama", vocab_size=320)
    settings: dict[str, Any] = {"block_size": BLOCK_SIZE, "max_total_tokens": MAX_SEQ_LEN}
    runner = TorchModelRunner(
        RunnerSettings(model_id=str(folder), dtype="float32", device="cpu", **settings),
        device=CpuDevice(),
        num_kv_blocks=8 * MAX_SEQ_LEN // BLOCK_SIZE,
        token_bytes=token_bytes(tokenizer),
        eos_token_ids=tokenizer.eos_token_ids,
    )
    return runner, tokenizer


def test_sentencepiece_json_schema_greedy_and_sampled(tiny_llama) -> None:
    runner, tokenizer = tiny_llama
    assert tokenizer.vocab_size < runner.vocab_size
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "word": {"type": "string", "maxLength": 4}},
        "required": ["ok", "word"],
    }
    regex = build_regex_from_schema(json.dumps(schema))
    params = [SamplingParams(grammar=regex)]
    params += [SamplingParams(grammar=regex, seed=seed, **SAMPLED) for seed in range(3)]
    prompt = tokenizer.encode("the answer:")
    results = _generate(runner, [prompt] * 4, params, max_new_tokens=100, first_request_id=1)
    for result in results:
        assert max(result.token_ids) < tokenizer.vocab_size
        text = _text(tokenizer, result, runner.eos_token_ids)
        assert re.fullmatch(regex, text), text
        value = json.loads(text)
        assert isinstance(value["ok"], bool) and len(value["word"]) <= 4, text


def test_sentencepiece_choice_with_space_pieces(tiny_llama) -> None:
    runner, tokenizer = tiny_llama
    params = [SamplingParams(grammar=" (yes|no)"), SamplingParams(grammar=" (yes|no)", seed=3)]
    prompt = tokenizer.encode("is it")
    results = _generate(runner, [prompt] * 2, params, max_new_tokens=10, first_request_id=5)
    for result in results:
        # decode drops the first space (Strip); the text after the prompt keeps it
        text = tokenizer.decode([*prompt[1:], *result.token_ids[:-1]])
        assert text in ("is it yes", "is it no"), text
        assert result.token_ids[-1] == 2


def test_a_broken_grammar_fails_its_sequence_alone(tiny_llama) -> None:
    runner, tokenizer = tiny_llama
    prompt = tuple(tokenizer.encode("is it"))
    yes_no = SamplingParams(grammar=" (yes|no)")
    [alone] = _generate(runner, [prompt], [yes_no], max_new_tokens=10, first_request_id=60)
    per_seq = MAX_SEQ_LEN // BLOCK_SIZE
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(3)]
    bad = tokenizer.encode("{", add_special_tokens=False)[-1]  # " (yes|no)" cannot start so
    items = (
        PrefillItem(70, prompt, len(prompt), 0, tables[0], yes_no),
        PrefillItem(71, prompt, len(prompt), 0, tables[1], SamplingParams(grammar="(")),
        PrefillItem(72, (*prompt, bad), len(prompt), 0, tables[2], yes_no),  # a recompute
    )
    outputs = runner.execute(StepPlan(1, PrefillShape(3, len(prompt) + 1), prefill=items)).outputs
    assert outputs[1].error is not None and outputs[1].error.startswith("grammar is not valid")
    assert outputs[2].error is not None and "does not continue its grammar" in outputs[2].error
    assert outputs[0].error is None
    generated = [outputs[0].token_id]
    released: tuple[int, ...] = (71, 72)  # the scheduler releases what failed
    while generated[-1] not in runner.eos_token_ids and len(generated) < 10:
        position = len(prompt) + len(generated) - 1
        decode = (DecodeItem(70, generated[-1], position, tables[0]),)
        plan = StepPlan(
            1 + len(generated), DecodeShape(1, per_seq), decode=decode, released=released
        )
        [output] = runner.execute(plan).outputs
        assert output.error is None
        generated.append(output.token_id)
        released = ()
    assert generated == alone.token_ids
    runner.execute(StepPlan(99, None, released=(70,)))
