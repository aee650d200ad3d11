"""RMSNorm (Llama, Mistral, Qwen2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, via torch's fused op."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return nnf.rms_norm(x, self.weight.shape, self.weight, self.eps)
