"""The runner's hook for prompts that are not only tokens (a VLM's images).

A ``PromptEmbedder`` is given the token embeddings of a prefill step and overwrites the rows
that stand for something else (image placeholder tokens) with their features. The runner
calls it only on prefills with an item that carries images; it knows nothing of images
itself (``tgi_vlm`` implements the embedders).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from tgi_core.contract import PrefillItem

__all__ = ["PromptEmbedder"]


class PromptEmbedder(Protocol):
    def __call__(
        self, items: Sequence[PrefillItem], token_offsets: Sequence[int], inputs_embeds: Tensor
    ) -> None:
        """Writes the features of ``items``' images over their placeholder rows, in place.

        ``inputs_embeds`` is ``[N, hidden]``, one row per token row of the step; item ``i``'s
        new tokens (``token_ids[num_cached_tokens:]``) start at row ``token_offsets[i]``.
        """
        ...
