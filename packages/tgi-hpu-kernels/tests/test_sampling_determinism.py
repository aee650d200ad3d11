"""Seeded draws are batch-invariant and survive preemption; bookkeeping does not leak."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tgi_core.contract import SamplingParams
from tgi_hpu_kernels.sampling import Sampler

CPU = torch.device("cpu")
VOCAB = 64
NUM_STEPS = 6
PROMPT = [3, 1, 4, 1, 5]

params_strategy = st.builds(
    SamplingParams,
    do_sample=st.booleans(),
    temperature=st.sampled_from([0.5, 1.0, 1.5]),
    top_k=st.sampled_from([0, 3, 20]),
    top_p=st.sampled_from([1.0, 0.9, 0.5]),
    typical_p=st.sampled_from([1.0, 0.8]),
    repetition_penalty=st.sampled_from([1.0, 1.3]),
    frequency_penalty=st.sampled_from([0.0, 0.4]),
    seed=st.integers(0, 2**64 - 1),
    top_n_tokens=st.integers(0, 3),
    watermark=st.booleans(),
)

TARGET = SamplingParams(
    do_sample=True, seed=2024, temperature=1.2, top_p=0.95, repetition_penalty=1.1, top_n_tokens=2
)


def _target_logits(step: int) -> torch.Tensor:
    """The target's logits at each step: the same whatever batch it runs in."""
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(step)) * 2


def _run_alone(params: SamplingParams) -> list[tuple[int, float]]:
    sampler = Sampler(VOCAB, CPU, num_candidates=8)
    sampler.add_sequence(0, params, PROMPT, len(PROMPT))
    out = []
    for step in range(NUM_STEPS):
        result = sampler.sample([0], _target_logits(step).unsqueeze(0))
        out.append((result.token_ids[0], result.logprobs[0]))
    return out


@settings(max_examples=25, deadline=None)
@given(
    others=st.lists(params_strategy, min_size=1, max_size=6),
    compositions=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=NUM_STEPS, max_size=NUM_STEPS
    ),
    noise_seed=st.integers(0, 1000),
)
def test_same_seed_same_tokens_in_any_batch_at_any_row(
    others: list[SamplingParams], compositions: list[tuple[int, int]], noise_seed: int
) -> None:
    alone = _run_alone(TARGET)
    sampler = Sampler(VOCAB, CPU, num_candidates=8)
    sampler.add_sequence(0, TARGET, PROMPT, len(PROMPT))
    for request_id, params in enumerate(others, start=1):
        sampler.add_sequence(request_id, params, [request_id, 2 * request_id], 1)
    alive = list(range(1, len(others) + 1))
    generator = torch.Generator().manual_seed(noise_seed)
    for step, (num_others, position) in enumerate(compositions):
        if step == NUM_STEPS // 2:
            sampler.release(alive.pop())  # the batch also changes through a release
        # a different subset of the other sequences each step, the target somewhere in it
        batch = alive[:num_others]
        batch.insert(min(position, len(batch)), 0)
        logits = torch.randn(len(batch), VOCAB + 2, generator=generator) * 3
        row = batch.index(0)
        logits[row, :VOCAB] = _target_logits(step)
        result = sampler.sample(batch, logits)
        assert result.token_ids[row] == alone[step][0]
        assert result.logprobs[row] == pytest.approx(alone[step][1], abs=1e-6)


def test_different_seeds_draw_different_tokens() -> None:
    sampler = Sampler(VOCAB, CPU)
    for seed in range(4):
        sampler.add_sequence(seed, SamplingParams(do_sample=True, seed=seed), [1], 1)
    flat = torch.zeros(4, VOCAB)
    draws = [sampler.sample(range(4), flat).token_ids for _ in range(10)]
    per_sequence = {tuple(step[i] for step in draws) for i in range(4)}
    assert len(per_sequence) == 4


@pytest.mark.parametrize(
    "params",
    [
        TARGET,
        SamplingParams(do_sample=True, seed=9, top_k=5, frequency_penalty=0.7, watermark=True),
        SamplingParams(repetition_penalty=1.5, watermark=True, top_n_tokens=1),
    ],
)
def test_preempted_sequence_continues_identically(params: SamplingParams) -> None:
    alone = _run_alone(params)
    sampler = Sampler(VOCAB, CPU, num_candidates=8)
    sampler.add_sequence(0, params, PROMPT, len(PROMPT))
    generated = []
    for step in range(NUM_STEPS // 2):
        generated.append(sampler.sample([0], _target_logits(step).unsqueeze(0)).token_ids[0])
    sampler.release(0)
    sampler.add_sequence(7, SamplingParams(do_sample=True, seed=1), [2], 1)  # reuses slots
    sampler.add_sequence(0, params, PROMPT + generated, len(PROMPT))
    for step in range(NUM_STEPS // 2, NUM_STEPS):
        result = sampler.sample([7, 0], torch.stack([torch.zeros(VOCAB), _target_logits(step)]))
        generated.append(result.token_ids[1])
    assert generated == [token for token, _ in alone]


def test_release_frees_device_state_and_unknown_ids_are_rejected() -> None:
    sampler = Sampler(VOCAB, CPU)
    penalised = SamplingParams(do_sample=True, repetition_penalty=1.2)
    for round_ in range(3):
        for request_id in range(20):
            sampler.add_sequence(request_id, penalised, [round_, request_id], 1)
        sampler.sample(range(20), torch.zeros(20, VOCAB))
        for request_id in range(20):
            sampler.release(request_id)
    assert sampler.num_sequences == 0
    assert sampler._counts.num_sequences == 0
    assert sampler._counts._table.tensor.shape[0] == 32  # grew once for 20 rows, then reused
    sampler.release(12345)  # unknown: a no-op
    with pytest.raises(KeyError, match="unknown request_ids"):
        sampler.sample([0], torch.zeros(1, VOCAB))


def test_bad_inputs_are_rejected() -> None:
    sampler = Sampler(VOCAB, CPU)
    sampler.add_sequence(0, SamplingParams(), [1], 1)
    with pytest.raises(ValueError, match="logits must be"):
        sampler.sample([0], torch.zeros(2, VOCAB))
    with pytest.raises(ValueError, match="columns"):
        sampler.sample([0], torch.zeros(1, VOCAB - 1))
    with pytest.raises(ValueError, match="distinct"):
        sampler.sample([0, 0], torch.zeros(2, VOCAB))
    with pytest.raises(ValueError, match="empty"):
        sampler.add_sequence(1, SamplingParams(), [], 0)
    with pytest.raises(ValueError, match="num_prompt_tokens"):
        sampler.add_sequence(1, SamplingParams(), [1], 2)
    with pytest.raises(ValueError, match="temperature"):
        sampler.add_sequence(1, SamplingParams(do_sample=True, temperature=0.0), [1], 1)
    with pytest.raises(ValueError, match="top_p"):
        sampler.add_sequence(1, SamplingParams(top_p=0.0), [1], 1)
    assert sampler.sample([], torch.zeros(0, VOCAB)).token_ids == []


def test_state_made_in_inference_mode_is_usable_outside_it() -> None:
    sampler = Sampler(VOCAB, CPU)
    params = SamplingParams(do_sample=True, seed=1, repetition_penalty=1.2)
    with torch.inference_mode():
        sampler.add_sequence(0, params, [1, 2], 1)
    sampler.add_sequence(1, params, [3], 1)
    assert len(sampler.sample([0, 1], torch.zeros(2, VOCAB)).token_ids) == 2
    with torch.inference_mode():
        assert len(sampler.sample([1, 0], torch.zeros(2, VOCAB)).token_ids) == 2
