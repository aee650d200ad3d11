"""The non-gated GELU MLP of StarCoder2 and GPT-BigCode: ``c_proj(gelu(c_fc(x)))``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.nn import functional as nnf

from tgi_hpu_kernels.layers.kernels import LayerKernels
from tgi_hpu_kernels.layers.linear import Linear

__all__ = ["GELU_APPROXIMATIONS", "GeluMLP"]

# HF activation name -> torch's ``gelu(approximate=...)``: the tanh forms (gelu_new,
# gelu_fast) are the same formula as torch's tanh approximation, written out.
GELU_APPROXIMATIONS: Mapping[str, str] = {
    "gelu": "none",
    "gelu_pytorch_tanh": "tanh",
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
}


class GeluMLP(nn.Module):
    """Two projections (``c_fc`` up, ``c_proj`` down) around a GELU, on ``kernels``' matmul."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        act: str,
        bias: bool,
        kernels: LayerKernels | None = None,
    ) -> None:
        super().__init__()
        if act not in GELU_APPROXIMATIONS:
            raise ValueError(
                f"activation {act!r} is not a GELU: one of {sorted(GELU_APPROXIMATIONS)}"
            )
        self.approximate = GELU_APPROXIMATIONS[act]
        self.c_fc = Linear(hidden_size, intermediate_size, bias=bias, kernels=kernels)
        self.c_proj = Linear(intermediate_size, hidden_size, bias=bias, kernels=kernels)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.c_proj(nnf.gelu(self.c_fc(x), approximate=self.approximate))
        return out
