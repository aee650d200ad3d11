"""Sampler end to end: greedy, logprobs, top tokens, penalties, watermark, prompt logprobs."""

from __future__ import annotations

import math
from collections import Counter

import msgspec
import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from tgi_core.contract import SamplingParams, TopToken
from tgi_hpu_kernels.sampling import Sampler, SampleResult

CPU = torch.device("cpu")


def _randn(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _reference_scores(
    row: torch.Tensor, history: list[int], params: SamplingParams
) -> torch.Tensor:
    """TGI's processing of one row, built from transformers' processors."""
    scores = row.unsqueeze(0).clone()
    if params.repetition_penalty != 1.0:
        processor = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
        scores = processor(torch.tensor([history]), scores)
    if params.frequency_penalty != 0.0:
        counts = torch.bincount(torch.tensor(history), minlength=scores.shape[1])
        scores = scores - params.frequency_penalty * counts
    if params.do_sample:
        warpers = [
            TemperatureLogitsWarper(params.temperature) if params.temperature != 1.0 else None,
            TopKLogitsWarper(params.top_k) if params.top_k else None,
            TopPLogitsWarper(params.top_p) if params.top_p < 1.0 else None,
            TypicalLogitsWarper(params.typical_p) if params.typical_p < 1.0 else None,
        ]
        for warper in warpers:
            scores = scores if warper is None else warper(None, scores)
    return scores[0]


def _check_row(result: SampleResult, row: int, scores: torch.Tensor, top_n: int) -> None:
    logprobs = scores.log_softmax(-1)
    token_id = result.token_ids[row]
    assert math.isfinite(scores[token_id].item())
    assert result.logprobs[row] == pytest.approx(logprobs[token_id].item(), abs=1e-5)
    expected = logprobs.topk(top_n) if top_n else None
    top = result.top_tokens[row]
    if expected is None:
        assert top == ()
        return
    finite = [(int(i), float(v)) for i, v in zip(*expected[::-1], strict=True) if v > -math.inf]
    assert [t.token_id for t in top] == [i for i, _ in finite]
    assert [t.logprob for t in top] == pytest.approx([v for _, v in finite], abs=1e-5)


def test_greedy_rows_take_the_argmax_over_the_real_vocabulary() -> None:
    vocab, padding = 50, 6
    sampler = Sampler(vocab, CPU)
    top_ns = [0, 1, 3, 5]
    for request_id, top_n in enumerate(top_ns):
        sampler.add_sequence(request_id, SamplingParams(top_n_tokens=top_n), [1, 2, 3], 3)
    logits = _randn(4, vocab + padding)
    logits[:, vocab:] = 100.0  # padded lm-head columns must never win
    original = logits.clone()
    result = sampler.sample(range(4), logits)
    assert torch.equal(logits, original)
    assert result.token_ids == logits[:, :vocab].argmax(-1).tolist()
    for row, top_n in enumerate(top_ns):
        _check_row(result, row, logits[row, :vocab], top_n)
    assert result.top_tokens[1] == (TopToken(result.token_ids[1], result.logprobs[1]),)


def test_plain_greedy_batch_reports_the_log_softmax_of_the_argmax() -> None:
    vocab = 50
    sampler = Sampler(vocab, CPU)
    for request_id in range(3):
        sampler.add_sequence(request_id, SamplingParams(), [1, 2], 2)
    logits = _randn(3, vocab + 4)
    logits[:, vocab:] = 100.0
    result = sampler.sample([2, 0, 1], logits)
    expected = logits[:, :vocab].log_softmax(-1)
    assert result.token_ids == expected.argmax(-1).tolist()
    chosen = expected.gather(1, expected.argmax(-1, keepdim=True))[:, 0].tolist()
    assert result.logprobs == pytest.approx(chosen, abs=1e-5)
    assert result.top_tokens == [(), (), ()]


def test_bf16_logits_are_upcast() -> None:
    params = SamplingParams(do_sample=True, seed=3, top_n_tokens=2, repetition_penalty=1.2)
    logits = _randn(2, 40, seed=1).to(torch.bfloat16)
    results = []
    for tensor in (logits, logits.float()):
        sampler = Sampler(40, CPU)
        sampler.add_sequence(0, params, [5, 6], 2)
        sampler.add_sequence(1, SamplingParams(top_n_tokens=1), [5], 1)
        results.append(sampler.sample([0, 1], tensor))
    assert results[0] == results[1]


MIXED = [
    SamplingParams(),
    SamplingParams(repetition_penalty=1.5, top_n_tokens=3),
    SamplingParams(frequency_penalty=0.8, repetition_penalty=0.9, top_n_tokens=5),
    SamplingParams(do_sample=True, seed=1, top_n_tokens=2),
    SamplingParams(do_sample=True, seed=2, temperature=0.6, top_k=10, top_n_tokens=5),
    SamplingParams(do_sample=True, seed=3, top_p=0.8, repetition_penalty=1.3, top_n_tokens=4),
    SamplingParams(do_sample=True, seed=4, temperature=1.4, typical_p=0.9, top_n_tokens=1),
    SamplingParams(
        do_sample=True,
        seed=5,
        temperature=0.8,
        top_k=30,
        top_p=0.95,
        typical_p=0.95,
        frequency_penalty=0.5,
        top_n_tokens=5,
    ),
    # warpers without do_sample are ignored (the contract resolves the sampling decision)
    SamplingParams(temperature=0.3, top_k=2, top_p=0.5, top_n_tokens=3),
]


def test_mixed_batch_matches_the_hf_processor_chain_over_steps() -> None:
    vocab = 300
    sampler = Sampler(vocab, CPU, num_candidates=32)
    histories = [[(7 * i + j) % vocab for j in range(5 + i)] for i in range(len(MIXED))]
    for request_id, (params, history) in enumerate(zip(MIXED, histories, strict=True)):
        sampler.add_sequence(request_id, params, history, len(history))
    for step in range(4):
        logits = _randn(len(MIXED), vocab, seed=10 + step)
        result = sampler.sample(range(len(MIXED)), logits)
        for row, params in enumerate(MIXED):
            expected = _reference_scores(logits[row], histories[row], params)
            if not params.do_sample:
                assert result.token_ids[row] == int(expected.argmax())
            _check_row(result, row, expected, params.top_n_tokens)
            histories[row].append(result.token_ids[row])


def test_frequency_penalty_hand_computed() -> None:
    sampler = Sampler(5, CPU)
    sampler.add_sequence(0, SamplingParams(frequency_penalty=0.5, top_n_tokens=5), [1, 1, 2], 2)
    zeros = torch.zeros(1, 5)
    first = sampler.sample([0], zeros)
    expected = torch.tensor([0.0, -1.0, -0.5, 0.0, 0.0]).log_softmax(-1)
    assert first.token_ids == [0]  # ties: the first index wins, like torch.argmax
    assert {t.token_id: t.logprob for t in first.top_tokens[0]} == pytest.approx(
        dict(enumerate(expected.tolist()))
    )
    second = sampler.sample([0], zeros)  # token 0 now counts once
    assert second.token_ids == [3]
    assert second.logprobs[0] == pytest.approx(
        torch.tensor([-0.5, -1.0, -0.5, 0.0, 0.0]).log_softmax(-1)[3].item()
    )


def _greenlist(previous: int, vocab: int) -> list[int]:
    """Kirchenbauer et al.'s reference greenlist (and TGI's): gamma = 0.5."""
    generator = torch.Generator().manual_seed(15485863 * previous)
    return sorted(torch.randperm(vocab, generator=generator)[: vocab // 2].tolist())


def test_watermark_adds_delta_to_the_greenlist_of_the_previous_token() -> None:
    vocab = 10
    sampler = Sampler(vocab, CPU)
    sampler.add_sequence(0, SamplingParams(watermark=True, top_n_tokens=vocab), [4, 3], 2)
    zeros = torch.zeros(1, vocab)
    previous = 3
    for _ in range(3):
        green = _greenlist(previous, vocab)
        result = sampler.sample([0], zeros)
        expected = torch.zeros(vocab)
        expected[green] = 2.0
        assert result.token_ids == [green[0]]
        logprobs = {t.token_id: t.logprob for t in result.top_tokens[0]}
        assert logprobs == pytest.approx(dict(enumerate(expected.log_softmax(-1).tolist())))
        previous = green[0]  # the next greenlist is seeded by the token just chosen


def test_watermark_comes_before_the_repetition_penalty() -> None:
    vocab = 10
    green = _greenlist(3, vocab)
    token = green[1]
    params = SamplingParams(watermark=True, repetition_penalty=4.0, top_n_tokens=vocab)
    sampler = Sampler(vocab, CPU)
    sampler.add_sequence(0, params, [token, 3], 2)
    logits = torch.zeros(1, vocab)
    logits[0, token] = 1.0
    result = sampler.sample([0], logits)
    expected = logits[0].clone()
    expected[green] += 2.0
    expected[token] /= 4.0  # (1 + 2) / 4: TGI's order (watermark, then penalties)
    expected[3] /= 4.0
    logprobs = {t.token_id: t.logprob for t in result.top_tokens[0]}
    assert logprobs == pytest.approx(dict(enumerate(expected.log_softmax(-1).tolist())))


def test_prompt_logprobs_are_the_log_softmax_of_the_previous_position() -> None:
    vocab = 40
    sampler = Sampler(vocab, CPU)
    token_ids = [3, 17, 0, 39, 17, 5]
    logits = _randn(len(token_ids), vocab + 3, seed=4).to(torch.bfloat16)
    values = sampler.prompt_logprobs(logits, token_ids)
    expected = logits[:, :vocab].float().log_softmax(-1)
    assert values[0] is None
    assert values[1:] == pytest.approx(
        [expected[t, token_ids[t + 1]].item() for t in range(len(token_ids) - 1)]
    )
    assert sampler.prompt_logprobs(logits[:1], [9]) == (None,)
    assert sampler.prompt_logprobs(logits[:5], token_ids) == values  # no last row needed
    with pytest.raises(ValueError, match="vocab_size"):
        sampler.prompt_logprobs(logits, [1, vocab])
    with pytest.raises(ValueError, match="positions"):
        sampler.prompt_logprobs(logits[:2], token_ids)


def _chi_square(counts: Counter[int], probs: list[float], total: int) -> float:
    return sum((counts[i] - total * p) ** 2 / (total * p) for i, p in enumerate(probs))


def test_sampled_frequencies_follow_softmax_over_temperature() -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])
    temperature = 0.7
    probs = (logits / temperature).softmax(-1).tolist()
    sampler = Sampler(6, CPU)
    num_sequences, num_steps = 400, 10
    for request_id in range(num_sequences):
        params = SamplingParams(do_sample=True, temperature=temperature, seed=request_id)
        sampler.add_sequence(request_id, params, [0], 1)
    counts: Counter[int] = Counter()
    for _ in range(num_steps):
        result = sampler.sample(range(num_sequences), logits.expand(num_sequences, 6))
        counts.update(result.token_ids)
    # 5 degrees of freedom: P(chi2 > 25) is about 1e-4.
    assert _chi_square(counts, probs, num_sequences * num_steps) < 25


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(do_sample=True, top_k=2), {5, 0}),
        (SamplingParams(do_sample=True, top_p=0.6), {5, 0}),  # 0.60 of mass needs two tokens
        (SamplingParams(do_sample=True, top_p=0.3), {5}),
    ],
)
def test_top_k_and_top_p_restrict_the_support(params: SamplingParams, allowed: set[int]) -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])  # softmax: 0.20, 0.12, ..., 0.54
    sampler = Sampler(6, CPU)
    for seed in range(500):
        sampler.add_sequence(seed, msgspec.structs.replace(params, seed=seed), [0], 1)
    drawn = set(sampler.sample(range(500), logits.expand(500, 6)).token_ids)
    assert drawn == allowed


EXTREME = [
    SamplingParams(do_sample=True, seed=1, temperature=1e-40),
    SamplingParams(do_sample=True, seed=2, temperature=1e-40, top_p=1e-30, typical_p=1e-30),
    SamplingParams(do_sample=True, seed=3, temperature=3e38, top_k=3),
    SamplingParams(repetition_penalty=1e-40),
    SamplingParams(do_sample=True, seed=4, repetition_penalty=3e38, temperature=1e-30),
    SamplingParams(do_sample=True, seed=5, repetition_penalty=1e-40, frequency_penalty=2.0),
]


@pytest.mark.parametrize("params", EXTREME)
def test_extreme_parameters_give_a_valid_token_without_touching_other_rows(
    params: SamplingParams,
) -> None:
    vocab = 64
    neighbour = SamplingParams(do_sample=True, seed=9, temperature=0.7, top_n_tokens=2)
    allowed = torch.zeros(vocab, dtype=torch.bool)
    allowed[[5, 17, 40]] = True  # a grammar-like mask: only these may be chosen
    alone = Sampler(vocab, CPU)
    alone.add_sequence(1, neighbour, [1, 2, 3], 3)
    sampler = Sampler(vocab, CPU)
    sampler.add_sequence(0, params, [5, 17, 5, 2], 2)
    sampler.add_sequence(1, neighbour, [1, 2, 3], 3)
    for step in range(4):
        logits = _randn(2, vocab, seed=step, scale=50.0)
        logits[0] = logits[0].masked_fill(~allowed, float("-inf"))
        result = sampler.sample([0, 1], logits)
        assert allowed[result.token_ids[0]]
        assert math.isfinite(result.logprobs[0]) and result.logprobs[0] <= 0.0
        expected = alone.sample([1], logits[1:].clone())
        assert result.token_ids[1] == expected.token_ids[0]
        assert result.logprobs[1] == pytest.approx(expected.logprobs[0], abs=1e-5)


def test_a_row_with_nothing_finite_falls_back_to_its_raw_argmax() -> None:
    vocab = 16
    sampler = Sampler(vocab, CPU)
    sampler.add_sequence(0, SamplingParams(do_sample=True, seed=1, temperature=1e-40), [1], 1)
    logits = torch.full((1, vocab), -3.0)
    logits[0, 11] = -1.0  # every score / 1e-40 is -inf in float32: nothing left to sample
    result = sampler.sample([0], logits)
    assert result.token_ids == [11]
    assert result.logprobs[0] == pytest.approx(logits[0].log_softmax(-1)[11].item())
