"""Batched logits warpers with per-row parameters: temperature, top-k, top-p, typical-p.

Each function takes ``scores`` ``[m, V]`` float32 and per-row parameters ``[m, 1]``, and
reproduces the matching ``transformers`` warper (``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``, ``TypicalLogitsWarper``, filter value ``-inf``,
``min_tokens_to_keep=1``) row by row, in place. A neutral parameter (``top_k == 0``,
``top_p == 1``, ``typical_p == 1``) leaves its row untouched, but callers should pass only
the rows that need a warper: every row costs a full pass over the vocabulary.

Top-p and typical-p need the tokens in probability order. A full sort of a 50k vocabulary
is slow on a CPU (~3 ms a row), so both first look at the ``num_candidates`` best tokens (a
partial top-k) and widen the candidates (x16, up to the whole vocabulary) only for the rows
whose cut falls outside them. Each widening costs one device-to-host sync.

What does not live here: penalties (``penalties.py``), the draw (``rng.py``) and the choice
of rows (``plan.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["DEFAULT_NUM_CANDIDATES", "temperature_", "top_k_", "top_p_", "typical_"]

DEFAULT_NUM_CANDIDATES = 256
_CANDIDATE_GROWTH = 16  # 256 -> 4096 -> the vocabulary: a partial top-k is ~6x cheaper
_NEG_INF = float("-inf")


def temperature_(scores: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``scores / temperature`` per row, in place."""
    return scores.div_(temperature)


def top_k_(scores: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """Keep each row's ``top_k`` highest scores (and ties with the k-th), in place.

    Args:
        top_k: ``[m, 1]`` int64, 0 disables the row.
        max_top_k: the largest ``top_k`` of the rows (host int, sizes the partial top-k).
    """
    width = min(max(max_top_k, 1), scores.shape[-1])
    kth_index = top_k.clamp(1, width) - 1
    kth_scores = scores.topk(width, dim=-1).values.gather(1, kth_index)
    kth_scores.masked_fill_(top_k == 0, _NEG_INF)
    return scores.masked_fill_(scores < kth_scores, _NEG_INF)


def top_p_(
    scores: torch.Tensor,
    one_minus_top_p: torch.Tensor,
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
) -> torch.Tensor:
    """Nucleus filtering per row, in place.

    Like HF: in ascending probability order, remove the tokens whose cumulative probability
    is ``<= 1 - top_p``, always keeping the most probable one.

    Args:
        one_minus_top_p: ``[m, 1]`` float32, ``1 - top_p`` computed in float64 as HF does
            (``float32(1 - 0.9)`` is not ``1 - float32(0.9)``); 0 disables the row.
    """
    disabled = one_minus_top_p <= 0
    threshold = one_minus_top_p.masked_fill(disabled, -1.0)
    probs = scores.softmax(dim=-1)

    def remove_rows(rows: torch.Tensor | None, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rows is None:
            remove, covered = _top_p_remove(probs, threshold, width)
            return remove, covered | disabled
        return _top_p_remove(probs[rows], threshold[rows], width)

    remove = _widening(remove_rows, num_candidates, scores.shape[-1])
    remove.masked_fill_(disabled, False)
    return scores.masked_fill_(remove, _NEG_INF)


def _top_p_remove(
    probs: torch.Tensor, threshold: torch.Tensor, num_candidates: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The removal mask from the ``num_candidates`` most probable tokens, and whether the
    rest of each row is surely removed (``covered``, ``[m, 1]``)."""
    cand_probs, cand_ids = _descending(probs, num_candidates)
    if num_candidates == probs.shape[-1]:
        rest = torch.zeros_like(cand_probs[:, :1])
    else:
        rest = (probs.sum(-1, keepdim=True) - cand_probs.sum(-1, keepdim=True)).clamp_min_(0)
    # The ascending cumulative sum, as HF computes it: the mass of the tokens outside the
    # candidates first, then the candidates from the least to the most probable.
    ascending = torch.cat([rest, cand_probs.flip(-1)], dim=-1).cumsum_(-1)[:, 1:].flip(-1)
    cand_remove = ascending <= threshold
    cand_remove[:, 0] = False
    remove = torch.ones_like(probs, dtype=torch.bool)
    remove.scatter_(1, cand_ids, cand_remove)
    # The best token outside the candidates has cumulative probability `rest`.
    return remove, rest <= threshold


def typical_(
    scores: torch.Tensor, mass: torch.Tensor, num_candidates: int = DEFAULT_NUM_CANDIDATES
) -> torch.Tensor:
    """Typical decoding per row, in place.

    Like HF: order the tokens by ``|-log p - H|`` (H the entropy), keep them up to the first
    one where the cumulative probability reaches ``mass``; ties with it stay.

    Args:
        mass: ``[m, 1]`` float32; 1.0 disables the row.
    """
    logp = scores.log_softmax(dim=-1)
    probs = logp.exp()
    entropy = -(logp * probs).nansum(-1, keepdim=True)
    shifted = (-logp - entropy).abs_()
    disabled = mass >= 1.0

    def threshold_rows(rows: torch.Tensor | None, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rows is None:
            threshold, covered = _typical_threshold(shifted, probs, mass, width)
            return threshold, covered | disabled
        return _typical_threshold(shifted[rows], probs[rows], mass[rows], width)

    threshold = _widening(threshold_rows, num_candidates, scores.shape[-1])
    threshold.masked_fill_(disabled, float("inf"))
    return scores.masked_fill_(shifted > threshold, _NEG_INF)


def _typical_threshold(
    shifted: torch.Tensor, probs: torch.Tensor, mass: torch.Tensor, num_candidates: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest shifted score kept per row ``[m, 1]``, and whether the cut fell within
    the ``num_candidates`` most typical tokens (``covered``, ``[m, 1]``)."""
    cand_shifted, cand_ids = shifted.topk(num_candidates, dim=-1, largest=False, sorted=True)
    cumulative = probs.gather(1, cand_ids).cumsum_(-1)
    last = (cumulative < mass).sum(-1, keepdim=True)
    covered = last < num_candidates
    return cand_shifted.gather(1, last.clamp_(max=num_candidates - 1)), covered


def _widening(
    compute: Callable[[torch.Tensor | None, int], tuple[torch.Tensor, torch.Tensor]],
    num_candidates: int,
    vocab_size: int,
) -> torch.Tensor:
    """``compute(rows, width)`` for every row (``rows=None``) from ``num_candidates`` best
    tokens, then again on wider candidate sets for the rows it did not cover, up to the
    whole vocabulary (where the answer is exact whatever ``covered`` says)."""
    width = min(num_candidates, vocab_size)
    result, covered = compute(None, width)
    while width < vocab_size and not bool(covered.all()):  # one host sync per stage
        width = min(width * _CANDIDATE_GROWTH, vocab_size)
        rows = (~covered).nonzero()[:, 0]
        result[rows], covered[rows] = compute(rows, width)
    return result


def _descending(probs: torch.Tensor, num_candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    if num_candidates == probs.shape[-1]:
        # A stable sort gives ties a fixed order, which keeps rows batch-invariant.
        return probs.sort(dim=-1, descending=True, stable=True)
    return probs.topk(num_candidates, dim=-1, sorted=True)
