"""``Linear``: ``nn.Linear`` whose matmul runs on the device's kernel (``LayerKernels.linear``)."""

from __future__ import annotations

from torch import Tensor, nn

from tgi_hpu_kernels.layers.kernels import LayerKernels, TorchLayerKernels

__all__ = ["Linear"]


class Linear(nn.Linear):
    """Same parameters (and checkpoint names) as ``nn.Linear``; ``forward`` goes through
    ``kernels`` so a device can pick its own matmul for the shapes it runs best."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        kernels: LayerKernels | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._kernels = kernels or TorchLayerKernels()

    def forward(self, x: Tensor) -> Tensor:
        return self._kernels.linear(x, self.weight, self.bias)
