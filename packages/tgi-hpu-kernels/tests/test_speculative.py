"""Speculative decoding on a real model (``--speculate``): the scheduler's n-gram drafts,
verified by the runner in one forward pass, give plain decoding's tokens, logprobs and top
tokens (greedy, seeded sampling, penalties, grammars), alone and batched, in fewer steps."""

from __future__ import annotations

import pytest

from tgi_core.contract import GenerationRequest, SamplingParams, TokenEvent
from tgi_core.settings.slices import RunnerSettings, SchedulerSettings
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_scheduler import Engine
from tgi_scheduler.testing import run_until_idle

BLOCK_SIZE = 4
# Repetitive prompts: a random tiny model soon repeats itself too, so drafts get accepted.
PROMPTS = {
    1: (5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6),
    2: (40, 41, 40, 41, 40, 41, 40),
    3: (3, 90, 17, 3, 90),
}
SAMPLINGS = {
    "greedy": SamplingParams(),
    "seeded": SamplingParams(do_sample=True, temperature=0.8, top_k=20, seed=7),
    "penalised": SamplingParams(repetition_penalty=1.3, frequency_penalty=0.2, top_n_tokens=3),
    # the grammar leaves two tokens at each step: its masks are rebuilt at every position
    "grammar": SamplingParams(grammar="(t5 |t6 )(t7 |t8 )(t9 )+"),
}


def _generate(
    make_runner, folder, speculate: int, sampling: SamplingParams, prompts=PROMPTS
) -> tuple[dict[int, list[TokenEvent]], int, float]:
    if sampling.grammar is None:
        runner = make_runner(folder, block_size=BLOCK_SIZE, speculate=speculate)
    else:  # a vocabulary of words "t<i> " (EOS: 2) for the grammar to constrain
        words = {i: f"t{i} ".encode() for i in range(128) if i != 2}
        settings = RunnerSettings(
            model_id=str(folder),
            dtype="float32",
            device="cpu",
            block_size=BLOCK_SIZE,
            max_total_tokens=128,
            speculate=speculate,
        )
        runner = TorchModelRunner(settings, num_kv_blocks=64, token_bytes=words)
    settings = SchedulerSettings(
        max_input_tokens=32,
        max_total_tokens=64,
        block_size=BLOCK_SIZE,
        max_batch_size=4,
        speculate=speculate,
    )
    engine = Engine.create(settings, runner, eos_token_ids=[])
    for request_id, prompt in prompts.items():
        engine.add_request(GenerationRequest(request_id, prompt, 24, sampling, ignore_eos=True))
    events = run_until_idle(engine)
    stats = engine.stats()
    skipped = stats.steps.skipped_tokens.sum if stats.steps else 0.0
    tokens = {i: [e for e in evs if isinstance(e, TokenEvent)] for i, evs in events.items()}
    return tokens, stats.num_decode_steps, skipped


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=str)
def test_speculation_gives_plain_decoding_s_answers(tiny_checkpoint, make_runner, sampling):
    folder, _ = tiny_checkpoint("llama")
    params = SAMPLINGS[sampling]
    plain, plain_steps, _ = _generate(make_runner, folder, 0, params)
    fast, fast_steps, skipped = _generate(make_runner, folder, 3, params)
    assert skipped > 0  # drafts were accepted: the comparison is not vacuous
    # the batch lasts as long as its least repetitive sequence
    assert fast_steps < plain_steps if sampling == "greedy" else fast_steps <= plain_steps
    for request_id, events in plain.items():
        ours = fast[request_id]
        assert [e.token_id for e in ours] == [e.token_id for e in events]
        assert [e.logprob for e in ours] == pytest.approx([e.logprob for e in events], abs=1e-4)
        assert [[t.token_id for t in e.top_tokens] for e in ours] == [
            [t.token_id for t in e.top_tokens] for e in events
        ]


@pytest.mark.parametrize("family", ["gpt_neox", "bloom"])  # paged; recomputed (rejected drafts)
def test_speculation_runs_on_a_transformers_fallback_model(tiny_checkpoint, make_runner, family):
    folder, _ = tiny_checkpoint(family)
    plain, _, _ = _generate(make_runner, folder, 0, SamplingParams())
    fast, _, skipped = _generate(make_runner, folder, 3, SamplingParams())
    assert skipped > 0
    assert {i: [e.token_id for e in evs] for i, evs in fast.items()} == {
        i: [e.token_id for e in evs] for i, evs in plain.items()
    }


def test_static_shapes_refuse_speculation(tiny_checkpoint, make_runner):
    folder, _ = tiny_checkpoint("llama")
    with pytest.raises(ValueError, match="--speculate runs on packed steps; cpu runs static"):
        make_runner(folder, static=True, speculate=2)
