"""The batched warpers and penalties against transformers' reference processors, row by row."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from tgi_hpu_kernels.sampling.penalties import TokenCounts, apply_penalties
from tgi_hpu_kernels.sampling.warpers import temperature_, top_k_, top_p_, typical_

VOCAB = 1000
CPU = torch.device("cpu")


def _logits(num_rows: int, scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, VOCAB, generator=generator) * scale


def _per_row(scores: torch.Tensor, warpers: list[object]) -> torch.Tensor:
    """Apply warpers[i] (an HF processor, or None for no-op) to row i."""
    rows = []
    for row, warper in zip(scores, warpers, strict=True):
        single = row.unsqueeze(0).clone()
        rows.append(single if warper is None else warper(None, single))  # type: ignore[operator]
    return torch.cat(rows)


def test_temperature_matches_hf() -> None:
    scores = _logits(4, 3.0, 0)
    temperatures = [0.3, 1.0, 1.7, 0.05]
    expected = _per_row(scores, [TemperatureLogitsWarper(t) for t in temperatures])
    actual = temperature_(scores.clone(), torch.tensor([[t] for t in temperatures]))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_top_k_matches_hf_with_mixed_rows(scale: float) -> None:
    scores = _logits(6, scale, 1)
    top_ks = [1, 0, 5, 50, VOCAB + 10, 0]  # 0 = disabled; above the vocabulary = keep all
    expected = _per_row(scores, [TopKLogitsWarper(k) if k else None for k in top_ks])
    actual = top_k_(scores.clone(), torch.tensor([[k] for k in top_ks]), max(top_ks))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert [int(row.isfinite().sum()) for row in actual] == [1, VOCAB, 5, 50, VOCAB, VOCAB]


def test_top_k_keeps_ties_with_the_kth_score() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    expected = TopKLogitsWarper(2)(None, scores.clone())
    actual = top_k_(scores.clone(), torch.tensor([[2]]), 2)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert int(actual.isfinite().sum()) == 3


# Peaked logits put the top-p / typical cut among the first candidates; flat logits push it
# past them, so the rows fall back to the full sort. Both must match HF.
@pytest.mark.parametrize(("scale", "num_candidates"), [(6.0, 16), (0.5, 16), (2.0, VOCAB)])
def test_top_p_matches_hf_with_mixed_rows(scale: float, num_candidates: int) -> None:
    scores = _logits(6, scale, 2)
    top_ps = [0.9, 1.0, 0.5, 0.99, 0.01, 0.75]
    expected = _per_row(scores, [TopPLogitsWarper(p) if p < 1 else None for p in top_ps])
    one_minus = torch.tensor([[1.0 - p] for p in top_ps], dtype=torch.float32)
    actual = top_p_(scores.clone(), one_minus, num_candidates)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert int(actual[1].isfinite().sum()) == VOCAB  # the disabled row is untouched
    assert int(actual[4].isfinite().sum()) >= 1  # min_tokens_to_keep
    if scale < 1:  # flat: the cut lies past the candidates, the full-sort fallback ran
        assert int(actual[0].isfinite().sum()) > num_candidates


def test_top_p_after_top_k_only_looks_at_the_survivors() -> None:
    scores = _logits(3, 1.0, 3)
    top_k = torch.tensor([[5], [40], [3]])
    top_k_(scores, top_k, 40)
    expected = _per_row(scores, [TopPLogitsWarper(0.8) for _ in range(3)])
    actual = top_p_(scores.clone(), torch.full((3, 1), 1.0 - 0.8), num_candidates=64)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("scale", "num_candidates"), [(6.0, 16), (0.5, 16), (2.0, VOCAB)])
def test_typical_matches_hf_with_mixed_rows(scale: float, num_candidates: int) -> None:
    scores = _logits(6, scale, 4)
    masses = [0.9, 1.0, 0.2, 0.99, 0.001, 0.5]
    expected = _per_row(scores, [TypicalLogitsWarper(m) if m < 1 else None for m in masses])
    actual = typical_(scores.clone(), torch.tensor([[m] for m in masses]), num_candidates)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert int(actual[1].isfinite().sum()) == VOCAB
    assert int(actual[4].isfinite().sum()) >= 1
    if scale < 1:
        assert int(actual[0].isfinite().sum()) > num_candidates


def test_warper_chain_matches_hf_chain() -> None:
    scores = _logits(4, 3.0, 5)
    params = [(0.7, 50, 0.9, 0.95), (1.3, 0, 0.8, 1.0), (1.0, 10, 1.0, 0.9), (0.5, 0, 1.0, 1.0)]
    expected_rows = []
    for row, (t, k, p, m) in zip(scores, params, strict=True):
        warped = TemperatureLogitsWarper(t)(None, row.unsqueeze(0).clone())
        for warper in (
            TopKLogitsWarper(k) if k else None,
            TopPLogitsWarper(p) if p < 1 else None,
            TypicalLogitsWarper(m) if m < 1 else None,
        ):
            warped = warped if warper is None else warper(None, warped)
        expected_rows.append(warped)
    actual = temperature_(scores.clone(), torch.tensor([[p[0]] for p in params]))
    actual = top_k_(actual, torch.tensor([[p[1]] for p in params]), 50)
    actual = top_p_(actual, torch.tensor([[1.0 - p[2]] for p in params]), 16)
    actual = typical_(actual, torch.tensor([[p[3]] for p in params]), 16)
    torch.testing.assert_close(actual, torch.cat(expected_rows), rtol=0, atol=0)


def test_repetition_penalty_matches_hf_over_the_distinct_history() -> None:
    scores = _logits(3, 3.0, 6)
    histories = [[1, 5, 5, 999, 7], [0, 1, 2, 3], [42]]
    penalties = [1.3, 0.7, 1.0]
    expected = torch.cat(
        [
            RepetitionPenaltyLogitsProcessor(p)(torch.tensor([h]), row.unsqueeze(0).clone())
            for row, h, p in zip(scores, histories, penalties, strict=True)
        ]
    )
    counts = TokenCounts(VOCAB, CPU)
    slots = torch.tensor([counts.add(h) for h in histories])
    actual = apply_penalties(
        scores.clone(), counts.rows(slots), torch.tensor([[p] for p in penalties]), None
    )
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_frequency_penalty_subtracts_penalty_times_count() -> None:
    scores = torch.tensor([[1.0, 2.0, -1.0, 0.5, 0.0]])
    counts = TokenCounts(5, CPU)
    slots = torch.tensor([counts.add([1, 1, 2, 1, 4, 17])])  # 17: outside the vocabulary
    actual = apply_penalties(scores.clone(), counts.rows(slots), None, torch.tensor([[0.5]]))
    torch.testing.assert_close(actual, torch.tensor([[1.0, 0.5, -1.5, 0.5, -0.5]]))


def test_repetition_then_frequency() -> None:
    scores = torch.tensor([[2.0, 2.0, -1.0, 3.0]])
    counts = TokenCounts(4, CPU)
    slots = torch.tensor([counts.add([0, 0, 2])])
    actual = apply_penalties(
        scores.clone(), counts.rows(slots), torch.tensor([[2.0]]), torch.tensor([[0.5]])
    )
    # token 0: 2 / 2 - 0.5 * 2; token 2: -1 * 2 - 0.5 * 1; tokens 1 and 3 untouched
    torch.testing.assert_close(actual, torch.tensor([[0.0, 2.0, -2.5, 3.0]]))


def test_token_counts_record_and_slot_reuse() -> None:
    counts = TokenCounts(6, CPU)
    first = counts.add([1, 2])
    second = counts.add([3])
    counts.record(torch.tensor([first, second]), torch.tensor([2, 5]))
    rows = counts.rows(torch.tensor([first, second]))
    torch.testing.assert_close(rows, torch.tensor([[0, 1, 2, 0, 0, 0], [0, 0, 0, 1, 0, 1.0]]))
    counts.free(first)
    assert counts.num_sequences == 1
    reused = counts.add([0])
    assert reused == first
    torch.testing.assert_close(
        counts.rows(torch.tensor([reused])), torch.tensor([[1.0, 0, 0, 0, 0, 0]])
    )
