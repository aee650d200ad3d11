"""LayerNorm with a bias (StarCoder2, GPT-BigCode), alone or after the residual add."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LayerNorm"]


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (weight and bias, checkpoint names ``weight``/``bias``) with the
    ``add_norm`` of the decoder layers. Torch's op on every device: the backends' norm
    kernels are RMSNorm only."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__(hidden_size, eps=eps)

    def add_norm(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """``(norm(x + residual), x + residual)``."""
        total = x + residual
        normed: Tensor = self(total)
        return normed, total
