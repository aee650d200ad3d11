"""The Kirchenbauer et al. watermark (arXiv:2301.10226), as TGI applies it.

Before each token, a "greenlist" of ``int(gamma * V)`` tokens is drawn from a CPU
``torch.Generator`` seeded with ``15485863 * previous_token`` (``randperm``), and ``delta`` is
added to their logits. The greenlist is the reference implementation's, bit for bit, so its
detector finds the watermark; since it depends only on the previous token it is cached.

What does not live here: deciding which rows are watermarked (``plan.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

__all__ = ["WATERMARK_HASH_KEY", "Watermark"]

WATERMARK_HASH_KEY = 15485863  # a large prime, as in the paper's code and TGI


class Watermark:
    """Greenlist bias for watermarked rows, with an LRU cache of greenlist masks."""

    def __init__(
        self,
        vocab_size: int,
        device: torch.device,
        gamma: float = 0.5,
        delta: float = 2.0,
        max_cached: int = 128,
    ) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.gamma = gamma
        self.delta = delta
        self._max_cached = max_cached
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._generator = torch.Generator(device="cpu")

    def greenlist(self, previous_token_id: int) -> torch.Tensor:
        """``[V]`` bool mask of the green tokens following ``previous_token_id``."""
        mask = self._cache.get(previous_token_id)
        if mask is not None:
            self._cache.move_to_end(previous_token_id)
            return mask
        self._generator.manual_seed(WATERMARK_HASH_KEY * previous_token_id)
        permutation = torch.randperm(self.vocab_size, generator=self._generator)
        cpu_mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        cpu_mask[permutation[: int(self.vocab_size * self.gamma)]] = True
        mask = cpu_mask.to(self.device)
        self._cache[previous_token_id] = mask
        if len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return mask

    def apply_(self, scores: torch.Tensor, previous_token_ids: Sequence[int]) -> torch.Tensor:
        """Add ``delta`` to the green tokens of each row of ``scores`` ``[w, V]``, in place."""
        masks = torch.stack([self.greenlist(token_id) for token_id in previous_token_ids])
        return scores.add_(masks, alpha=self.delta)
