"""RMSNorm (Llama, Mistral, Qwen2), alone or fused with the residual add before it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.layers.kernels import LayerKernels, TorchLayerKernels

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, by ``kernels``."""

    def __init__(self, hidden_size: int, eps: float, kernels: LayerKernels | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self._kernels = kernels or TorchLayerKernels()

    def forward(self, x: Tensor) -> Tensor:
        return self._kernels.rms_norm(x, self.weight, self.eps)

    def add_norm(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """``(norm(x + residual), x + residual)``; ``residual`` may be updated in place."""
        return self._kernels.add_rms_norm(x, residual, self.weight, self.eps)
