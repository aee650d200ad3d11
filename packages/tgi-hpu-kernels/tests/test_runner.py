"""The runner end to end on a tiny Llama: execute with the real Sampler, prompt logprobs,
warmup and its unwarmed-shape count, KV pool sizing, profiling."""

from __future__ import annotations

import json

import pytest
import torch

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    ModelRunner,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import ProfileSettings

PROMPTS = ([5, 17, 33, 9, 41, 7, 3], [88, 12, 64, 101, 23])


def _prefill(
    request_id: int, tokens: list[int], table: tuple[int, ...], **kw: object
) -> PrefillItem:
    return PrefillItem(
        request_id=request_id,
        token_ids=tuple(tokens),
        num_prompt_tokens=len(tokens),
        num_cached_tokens=0,
        block_table=table,
        sampling=SamplingParams(),
        **kw,  # type: ignore[arg-type]
    )


def test_runner_implements_the_protocol(tiny_checkpoint, make_runner):
    runner = make_runner(tiny_checkpoint("llama")[0])
    assert isinstance(runner, ModelRunner)
    assert (runner.num_kv_blocks, runner.block_size, runner.num_unwarmed_shapes) == (64, 4, 0)


def test_greedy_execute_matches_transformers_generate(tiny_checkpoint, make_runner):
    folder, hf_model = tiny_checkpoint("llama")
    runner = make_runner(folder)
    num_new = 12
    tables = [tuple(range(8)), tuple(range(8, 16))]
    expected = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([prompt]),
                max_new_tokens=num_new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        expected.append(out[0, len(prompt) :].tolist())

    items = tuple(_prefill(i, p, tables[i]) for i, p in enumerate(PROMPTS))
    output = runner.execute(StepPlan(step_id=0, shape=PrefillShape(2, 8), prefill=items))
    assert [o.request_id for o in output.outputs] == [0, 1]
    generated = [[o.token_id] for o in output.outputs]
    for step in range(1, num_new):
        decode = tuple(
            DecodeItem(
                request_id=i,
                token_id=generated[i][-1],
                position=len(p) + step - 1,
                block_table=tables[i],
            )
            for i, p in enumerate(PROMPTS)
        )
        output = runner.execute(StepPlan(step_id=step, shape=DecodeShape(2, 8), decode=decode))
        for i, o in enumerate(output.outputs):
            generated[i].append(o.token_id)
            assert o.logprob <= 0.0
    assert generated == expected


def test_prompt_logprobs_match_transformers(tiny_checkpoint, make_runner):
    folder, hf_model = tiny_checkpoint("llama")
    runner = make_runner(folder)
    prompt = PROMPTS[0]
    plan = StepPlan(
        step_id=0,
        shape=PrefillShape(1, 8),
        prefill=(_prefill(7, prompt, tuple(range(4)), prompt_logprobs=True),),
    )
    values = runner.execute(plan).outputs[0].prompt_logprobs
    with torch.no_grad():
        logprobs = hf_model(torch.tensor([prompt])).logits[0].log_softmax(-1)
    expected = [logprobs[t - 1, prompt[t]].item() for t in range(1, len(prompt))]
    assert values is not None and values[0] is None and len(values) == len(prompt)
    assert values[1:] == pytest.approx(expected, abs=1e-4)


def test_release_only_plan_answers_nothing(tiny_checkpoint, make_runner):
    runner = make_runner(tiny_checkpoint("llama")[0])
    plan = StepPlan(step_id=0, shape=PrefillShape(1, 8), prefill=(_prefill(3, [4, 5], (0,)),))
    runner.execute(plan)
    released = runner.execute(StepPlan(step_id=1, shape=None, released=(3,)))
    assert released.outputs == ()
    with pytest.raises(KeyError):  # the sampler forgot sequence 3
        decode = DecodeItem(request_id=3, token_id=1, position=2, block_table=(0,))
        runner.execute(StepPlan(step_id=2, shape=DecodeShape(1, 1), decode=(decode,)))


def test_warmup_runs_every_shape_and_counts_unwarmed_ones(tiny_checkpoint, make_runner):
    runner = make_runner(tiny_checkpoint("llama")[0], static=True)
    shapes = [PrefillShape(2, 8), PrefillShape(2, 8, num_blocks=4), DecodeShape(2, 4)]
    seen = []
    report = runner.warmup(shapes, lambda done, total, shape: seen.append((done, total, shape)))
    assert (report.num_shapes, report.num_kv_blocks) == (3, 64)
    assert seen == [(i + 1, 3, s) for i, s in enumerate(shapes)]

    prefill = StepPlan(
        step_id=0, shape=PrefillShape(2, 8), prefill=(_prefill(1, [4, 5, 6], (0, 1)),)
    )
    runner.execute(prefill)
    decode = DecodeItem(request_id=1, token_id=9, position=3, block_table=(0, 1))
    runner.execute(StepPlan(step_id=1, shape=DecodeShape(2, 4), decode=(decode,)))
    assert runner.num_unwarmed_shapes == 0
    for step in (2, 3):  # an unwarmed bucket, twice: counted once
        decode = DecodeItem(request_id=1, token_id=9, position=2 + step, block_table=(0, 1))
        runner.execute(StepPlan(step_id=step, shape=DecodeShape(2, 8), decode=(decode,)))
    assert runner.num_unwarmed_shapes == 1
    assert runner.unwarmed_shapes == {DecodeShape(2, 8)}


def test_disabled_warmup_runs_nothing(tiny_checkpoint, make_runner):
    runner = make_runner(tiny_checkpoint("llama")[0], warmup_enabled=False)
    report = runner.warmup([PrefillShape(2, 8)])
    assert (report.num_shapes, report.num_kv_blocks) == (0, 64)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_batch_size": 4, "max_total_tokens": 64}, 4 * 16),
        ({"max_batch_total_tokens": 100, "max_total_tokens": 64}, 25),
    ],
)
def test_cpu_kv_pool_is_capped_by_the_limits(tiny_checkpoint, make_runner, limits, expected):
    runner = make_runner(tiny_checkpoint("llama")[0], num_kv_blocks=None, **limits)
    assert runner.num_kv_blocks == expected


def test_profiler_writes_a_chrome_trace(tiny_checkpoint, make_runner, tmp_path):
    profile = ProfileSettings(wait_steps=1, warmup_steps=1, active_steps=2, path=str(tmp_path))
    runner = make_runner(tiny_checkpoint("llama")[0], profile=profile)
    plan = StepPlan(step_id=0, shape=PrefillShape(1, 8), prefill=(_prefill(1, [4, 5, 6], (0,)),))
    for step in range(5):
        runner.execute(StepPlan(step_id=step, shape=None, released=(1,)) if step % 2 else plan)
    traces = list(tmp_path.glob("rank0_step*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any(e.get("name") == "tgi_runner_step" for e in events)


def test_bfloat16_stays_close_to_float32(tiny_checkpoint, make_runner):
    folder, _ = tiny_checkpoint("qwen2")
    plan = StepPlan(step_id=0, shape=PrefillShape(1, 8), prefill=(_prefill(1, PROMPTS[0], (0, 1)),))
    full = make_runner(folder).compute_logits(plan)
    half = make_runner(folder, dtype="bfloat16").compute_logits(plan)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=2e-2, rtol=0)
