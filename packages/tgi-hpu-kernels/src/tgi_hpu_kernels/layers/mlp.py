"""The gated SiLU MLP of Llama-style models, with gate and up projections merged."""

from __future__ import annotations

from torch import Tensor, nn

from tgi_hpu_kernels.layers.kernels import LayerKernels, TorchLayerKernels
from tgi_hpu_kernels.layers.linear import Linear

__all__ = ["GatedMLP"]


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))``; ``gate_up_proj`` holds ``[gate; up]`` stacked by rows."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        bias: bool = False,
        kernels: LayerKernels | None = None,
    ) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias, kernels=kernels)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias, kernels=kernels)
        self._kernels = kernels or TorchLayerKernels()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down_proj(self._kernels.silu_and_mul(self.gate_up_proj(x)))
        return out
