"""Token embeddings and the LM head (optionally tied to the embeddings)."""

from __future__ import annotations

from torch import Tensor, nn

from tgi_hpu_kernels.layers.kernels import LayerKernels
from tgi_hpu_kernels.layers.linear import Linear

__all__ = ["LMHead", "VocabEmbedding"]


class VocabEmbedding(nn.Embedding):
    """``[N]`` token ids -> ``[N, hidden]``."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__(vocab_size, hidden_size)


class LMHead(Linear):
    """Projects final hidden states to float32 vocabulary logits.

    With ``tied_to`` the head shares the embedding matrix (one tensor, loaded once);
    its parameter keeps the checkpoint name ``lm_head.weight`` otherwise.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        *,
        tied_to: VocabEmbedding | None = None,
        kernels: LayerKernels | None = None,
    ) -> None:
        super().__init__(hidden_size, vocab_size, bias=False, kernels=kernels)
        if tied_to is not None:
            self.weight = tied_to.weight

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).float()
