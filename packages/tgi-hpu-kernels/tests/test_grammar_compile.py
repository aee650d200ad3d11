"""Grammar indexes compiled off the engine thread: ``IndexCompiler`` on a hand-made vocabulary,
``TorchModelRunner`` as a ``RequestPreparer``, and an engine that keeps stepping while a
heavy grammar compiles over SmolLM2's 49k-token vocabulary."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from outlines_core import Vocabulary

from tgi_core.contract import (
    PREPARED,
    PREPARING,
    FinishReason,
    GenerationRequest,
    Preparation,
    RequestPreparer,
    SamplingParams,
    TokenEvent,
)
from tgi_core.settings.slices import RunnerSettings, SchedulerSettings
from tgi_core.testing import smollm2_tokenizer
from tgi_core.tokenization import Tokenizer, token_bytes
from tgi_core.validation.grammar_bounds import check_estimate
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.sampling.grammar import GrammarConstraints, GrammarError
from tgi_hpu_kernels.sampling.grammar_compiler import IndexCompiler
from tgi_hpu_kernels.testing import save_tiny_checkpoint
from tgi_scheduler import Engine
from tgi_scheduler.testing import run_until_idle

# ids 0..2 special, 3.. text (as test_grammar_masks.py)
TOKENS = {3: b"yes", 4: b"no", 5: b"y", 6: b"es", 7: b"n", 8: b"o", 10: b"x", 11: b" "}
EOS_IDS = (2, 9)
# just inside the front end's bounds: ~1 s to compile over SmolLM2's vocabulary
HEAVY = r"[\s\S]{0,60}"
SMOLLM2_VOCAB = 49152
BLOCK_SIZE = 16

Smollm2Bytes = tuple[Tokenizer, dict[int, bytes]]
Smollm2Runner = tuple[TorchModelRunner, Tokenizer]


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _constraints(**kwargs: object) -> GrammarConstraints:
    return GrammarConstraints(TOKENS, EOS_IDS, torch.device("cpu"), **kwargs)  # type: ignore[arg-type]


def _settle(compiler: IndexCompiler, regex: str) -> Preparation:
    """Ask until the compile of ``regex`` ended (bounded: 60 s of waits at most)."""
    for _ in range(600):
        answer = compiler.status(regex)
        if answer != PREPARING:
            return answer
        compiler.wait(0.1)
    raise AssertionError(f"{regex!r} never finished compiling")


def test_a_compile_runs_off_the_calling_thread_once_per_regex() -> None:
    constraints = _constraints()
    compiler = constraints.compiler
    assert compiler.status("(yes|no)") == PREPARING  # never built on the calling thread
    assert any(t.name == "grammar-compile" for t in threading.enumerate())
    assert compiler.status("(yes|no)") in (PREPARING, PREPARED)  # a second request shares it
    assert _settle(compiler, "(yes|no)") == PREPARED
    assert compiler.status("(yes|no)") == PREPARED  # at once, from the cache
    constraints.add_sequence(1, "(yes|no)")
    assert compiler.num_compiles == 1
    compiler.close()


def test_an_invalid_regex_fails_and_is_remembered() -> None:
    constraints = _constraints()
    compiler = constraints.compiler
    failed = _settle(compiler, "(unclosed")
    assert failed.error is not None and failed.error.startswith("grammar is not valid")
    assert compiler.status("(unclosed") == failed
    with pytest.raises(GrammarError, match="grammar is not valid"):
        constraints.add_sequence(1, "(unclosed")
    assert compiler.num_compiles == 1
    compiler.close()


def test_an_index_answered_ready_outlives_its_eviction_until_the_step_ends() -> None:
    constraints = _constraints(max_cached_indexes=1)
    compiler = constraints.compiler
    assert _settle(compiler, "x") == PREPARED
    assert _settle(compiler, "(no)+") == PREPARED  # the cache holds one: "x" is evicted...
    constraints.add_sequence(1, "x")  # ...but kept for the prefill its answer promised
    assert compiler.num_compiles == 2
    compiler.end_step()
    assert compiler.status("x") == PREPARING  # gone now: compiled again
    compiler.close()


# -- SmolLM2's vocabulary -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_bytes() -> Smollm2Bytes:
    tokenizer = smollm2_tokenizer()
    return tokenizer, token_bytes(tokenizer)


def test_a_compile_past_its_deadline_fails_and_frees_the_queue(smollm2_bytes: Smollm2Bytes) -> None:
    tokenizer, vocabulary = smollm2_bytes
    clock = ManualClock()
    eos_id, *_ = tokenizer.eos_token_ids
    by_bytes: dict[bytes, list[int]] = {}
    for token_id, data in vocabulary.items():
        if token_id not in tokenizer.eos_token_ids:
            by_bytes.setdefault(data, []).append(token_id)
    compiler = IndexCompiler(
        Vocabulary(eos_id, by_bytes), max_cached_indexes=4, deadline_s=10.0, clock=clock
    )
    assert compiler.status(HEAVY) == PREPARING
    assert compiler.status("(yes|no)") == PREPARING  # queued behind it
    for _ in range(6000):  # until the compile thread started HEAVY (it takes ~1 s)
        if compiler._pending[HEAVY].started_at is not None:
            break
        threading.Event().wait(0.01)
    clock.now = 10.5
    failed = compiler.status(HEAVY)
    assert failed.error == "grammar is too complex: its index took over 10 s"
    assert compiler.status(HEAVY) == failed  # remembered: no second thread stuck on it
    assert _settle(compiler, "(yes|no)") == PREPARED  # a new thread took the queue over
    assert compiler.num_compiles == 2
    compiler.close()


@pytest.fixture(scope="module")
def smollm2_runner(
    tmp_path_factory: pytest.TempPathFactory, smollm2_bytes: Smollm2Bytes
) -> Iterator[Smollm2Runner]:
    """A tiny random Llama as wide as SmolLM2, with its tokenizer: the grammar work is real."""
    tokenizer, vocabulary = smollm2_bytes
    folder: Path = tmp_path_factory.mktemp("tiny-llama-smollm2-vocab")
    save_tiny_checkpoint(folder, "llama", vocab_size=SMOLLM2_VOCAB)
    settings = RunnerSettings(
        model_id=str(folder),
        dtype="float32",
        device="cpu",
        block_size=BLOCK_SIZE,
        max_total_tokens=256,
        warmup_enabled=False,
    )
    runner = TorchModelRunner(
        settings,
        device=CpuDevice(),
        num_kv_blocks=64,
        token_bytes=vocabulary,
        eos_token_ids=tokenizer.eos_token_ids,
    )
    yield runner, tokenizer
    runner.close()


def test_the_runner_prepares_a_grammar_off_its_thread_and_reuses_it(
    smollm2_runner: Smollm2Runner,
) -> None:
    runner, tokenizer = smollm2_runner
    assert isinstance(runner, RequestPreparer)
    prompt = tuple(tokenizer.encode("yes or no?"))
    first = GenerationRequest(1, prompt, 8, SamplingParams(grammar=" (yes|no)"))
    assert runner.prepare(GenerationRequest(9, prompt, 8)) == PREPARED  # nothing to do
    assert runner.prepare(first) == PREPARING
    for _ in range(600):
        if runner.prepare(first) != PREPARING:
            break
        runner.wait_prepared(0.1)
    assert runner.prepare(first) == PREPARED
    again = GenerationRequest(2, prompt, 8, SamplingParams(grammar=" (yes|no)"))
    assert runner.prepare(again) == PREPARED  # the same regex: ready at its first answer


def test_the_engine_keeps_stepping_while_a_heavy_grammar_compiles(
    smollm2_runner: Smollm2Runner,
) -> None:
    runner, tokenizer = smollm2_runner
    check_estimate(HEAVY)  # the front end lets it through
    settings = SchedulerSettings(
        max_input_tokens=64, max_total_tokens=256, block_size=BLOCK_SIZE, max_batch_size=4
    )
    engine = Engine.create(settings, runner, eos_token_ids=tokenizer.eos_token_ids)
    prompt = tuple(tokenizer.encode("Write anything."))
    num_new = 256 - len(prompt)
    engine.add_request(GenerationRequest(1, prompt, num_new, ignore_eos=True))
    engine.step()  # 1's prefill: its first token
    engine.add_request(GenerationRequest(2, prompt, 80, SamplingParams(grammar=HEAVY)))
    steps: list[list[int]] = []
    while engine.scheduler.preparing:
        steps.append([e.request_id for e in engine.step()])
    assert steps[-1] == [2]  # prefilled in the step that found its index ready
    assert all(ids in ([1], []) for ids in steps[:-1])  # before: 1's tokens (until its end)
    tokens_of_1 = steps.count([1])
    assert tokens_of_1 >= 2  # 1's stream went on while 2's index compiled
    events = run_until_idle(engine)
    assert 1 + tokens_of_1 + len(events.get(1, [])) == num_new  # nothing lost
    assert all(isinstance(e, TokenEvent) for e in events[2])
    text = tokenizer.decode([e.token_id for e in events[2][:-1]])  # type: ignore[union-attr]
    assert re.fullmatch(HEAVY, text), text
    assert events[2][-1].finish_reason == FinishReason.EOS_TOKEN  # type: ignore[union-attr]
