"""Repetition and frequency penalties over each sequence's whole token history.

The history (prompt included) is kept on the device as per-sequence token counts, one row of
a ``SlotTable`` per penalised sequence, updated with each sampled token; applying a penalty
is then two elementwise passes over the batch's rows, with no padded id lists.

- repetition penalty, as HF's ``RepetitionPenaltyLogitsProcessor``: for every distinct token
  of the history, a negative logit is multiplied by the penalty, a positive one divided;
- frequency penalty, as OpenAI defines it (and TGI documents it): subtract
  ``penalty * count`` of each token. TGI's batched processor also divides the counts by the
  padded width of its batch's id tensor, which makes a row depend on its neighbours; that
  quirk is deliberately not reproduced.

What does not live here: the watermark (``watermark.py``), warpers (``warpers.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tgi_hpu_kernels.sampling.slots import SlotTable

__all__ = ["TokenCounts", "apply_penalties"]


class TokenCounts:
    """How often each token occurs in each penalised sequence's history, on the device."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        # float32 so the frequency penalty multiplies it without a conversion pass.
        self._table = SlotTable(vocab_size, torch.float32, device)

    @property
    def num_sequences(self) -> int:
        return self._table.num_used

    def add(self, token_ids: Sequence[int]) -> int:
        """A slot holding the counts of ``token_ids``; ids outside the vocabulary are
        dropped (the model can never produce them, as in HF)."""
        slot = self._table.alloc()
        table = self._table.tensor
        ids = torch.tensor(token_ids, dtype=torch.int64)
        ids = ids[(ids >= 0) & (ids < self.vocab_size)]
        if ids.numel():
            counts = torch.bincount(ids, minlength=self.vocab_size).to(torch.float32)
            table[slot] = counts.to(table.device)
        return slot

    def free(self, slot: int) -> None:
        self._table.free(slot)

    def rows(self, slots: torch.Tensor) -> torch.Tensor:
        """``[p, V]`` counts of the sequences in ``slots`` (a copy)."""
        return self._table.tensor.index_select(0, slots)

    def record(self, slots: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Count one more occurrence of ``token_ids[i]`` for ``slots[i]``."""
        ones = torch.ones_like(token_ids, dtype=torch.float32)
        self._table.tensor.index_put_((slots, token_ids), ones, accumulate=True)


def apply_penalties(
    scores: torch.Tensor,
    counts: torch.Tensor,
    repetition_penalty: torch.Tensor | None,
    frequency_penalty: torch.Tensor | None,
) -> torch.Tensor:
    """``scores`` ``[p, V]`` penalised from ``counts`` ``[p, V]`` (may reuse ``scores``).

    Args:
        repetition_penalty: ``[p, 1]`` (1.0 is neutral), or None when no row has one.
        frequency_penalty: ``[p, 1]`` (0.0 is neutral), or None when no row has one.
    """
    if repetition_penalty is not None:
        penalised = torch.where(
            scores < 0, scores * repetition_penalty, scores / repetition_penalty
        )
        scores = torch.where(counts > 0, penalised, scores)
    if frequency_penalty is not None:
        scores = scores.addcmul_(counts, frequency_penalty, value=-1.0)
    return scores
