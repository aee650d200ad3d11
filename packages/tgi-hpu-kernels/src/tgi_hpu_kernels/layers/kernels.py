"""The kernels a decoder layer calls through its backend, and their torch versions.

Linear layers (dense, or weight-only quantized), RMSNorm (optionally fused with the residual
add that precedes it), SiLU-and-mul of the merged gate/up projection, rotary embeddings, and
optionally a whole stack of standard decoder layers (``DecoderLayerSpec``) in one fused path.
A model gets them from the device it is built for (``tgi_hpu_kernels.device.Device``
implements ``LayerKernels``): the base device runs the torch functions below (and has no
fused stack), the CPU replaces them with native kernels where it has them. The layers in
this package never ask which one they got."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor
from torch.nn import functional as nnf

from tgi_hpu_kernels.layers.rotary import apply_rotary

if TYPE_CHECKING:
    from tgi_hpu_kernels.attention import AttentionMetadata
    from tgi_hpu_kernels.kv_cache import KVCache
    from tgi_hpu_kernels.layers.quantized import QuantizedWeight
    from tgi_hpu_kernels.layers.uint4_words import Uint4Words

__all__ = [
    "DecoderLayerSpec",
    "LayerKernels",
    "TorchLayerKernels",
    "add_rms_norm_torch",
    "rms_norm_torch",
    "silu_and_mul_torch",
]


@dataclass(frozen=True, eq=False)
class DecoderLayerSpec:
    """One pre-norm decoder layer as a fused kernel sees it: RMSNorm, merged QKV projection,
    rotary, attention, output projection, RMSNorm, merged gate/up projection, SiLU-and-mul,
    down projection, with residual adds (Llama, Mistral, Qwen2). Tensors are the layer's own
    parameters; a projection's weight is its dense matrix or, in a weight-only quantized
    model, its codes and scales; biases are None where the layer has none."""

    layer_idx: int
    input_norm: Tensor
    qkv_weight: Tensor | QuantizedWeight
    qkv_bias: Tensor | None
    o_weight: Tensor | QuantizedWeight
    o_bias: Tensor | None
    post_norm: Tensor
    gate_up_weight: Tensor | QuantizedWeight
    gate_up_bias: Tensor | None
    down_weight: Tensor | QuantizedWeight
    down_bias: Tensor | None
    eps: float
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    sliding_window: int | None

    def projections(self) -> tuple[tuple[Tensor | QuantizedWeight, Tensor | None], ...]:
        """(weight, bias) of the QKV, output, gate/up and down projections, in that order."""
        return (
            (self.qkv_weight, self.qkv_bias),
            (self.o_weight, self.o_bias),
            (self.gate_up_weight, self.gate_up_bias),
            (self.down_weight, self.down_bias),
        )


class LayerKernels(Protocol):
    def decoder_stack(
        self,
        layers: Sequence[DecoderLayerSpec],
        hidden: Tensor,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
    ) -> tuple[Tensor, Tensor] | None:
        """Runs every layer on ``hidden`` (the embeddings) in one fused path and returns the
        last layer's (output, residual), or None where the device has no such path for this
        step (the model then runs its layers one by one)."""
        ...

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``x @ weight.T + bias`` (``nn.functional.linear``)."""
        ...

    def quantized_linear(self, x: Tensor, weight: QuantizedWeight, bias: Tensor | None) -> Tensor:
        """``x @ dequantize(weight).T + bias`` in ``x``'s dtype (``layers/quantized.py``)."""
        ...

    def pack_quantized(self, weight: QuantizedWeight) -> Uint4Words | None:
        """A loaded weight in the layout this device's ``quantized_linear`` reads instead of
        the codes (Gaudi's), made once; None: it reads the codes."""
        ...

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension."""
        ...

    def add_rms_norm(
        self, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        """``(rms_norm(x + residual), x + residual)``; may update ``residual`` in place and
        return it as the sum."""
        ...

    def silu_and_mul(self, x: Tensor) -> Tensor:
        """``[N, 2I]`` (gate then up) -> ``silu(gate) * up`` ``[N, I]``."""
        ...

    def rotary(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        """Rotates ``x`` ``[N, heads, head_dim]`` by ``cos``/``signed_sin`` ``[N, 1, head_dim]``;
        may work in place on ``x`` (a view into its projection) and return it."""
        ...


def rms_norm_torch(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return nnf.rms_norm(x, weight.shape, weight, eps)


def add_rms_norm_torch(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    total = x + residual
    return nnf.rms_norm(total, weight.shape, weight, eps), total


def silu_and_mul_torch(x: Tensor) -> Tensor:
    gate, up = x.chunk(2, dim=-1)
    return nnf.silu(gate) * up


class TorchLayerKernels:
    """``LayerKernels`` with plain torch ops (any device); no fused stack."""

    def decoder_stack(
        self,
        layers: Sequence[DecoderLayerSpec],
        hidden: Tensor,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
    ) -> tuple[Tensor, Tensor] | None:
        return None

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return nnf.linear(x, weight, bias)

    def quantized_linear(self, x: Tensor, weight: QuantizedWeight, bias: Tensor | None) -> Tensor:
        # No quantized kernel: dequantize every call (correct anywhere, fast nowhere).
        from tgi_hpu_kernels.layers.quantized import dequantize

        return nnf.linear(x, dequantize(weight).to(x.dtype), bias)

    def pack_quantized(self, weight: QuantizedWeight) -> Uint4Words | None:
        return None

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        return rms_norm_torch(x, weight, eps)

    def add_rms_norm(
        self, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        return add_rms_norm_torch(x, residual, weight, eps)

    def silu_and_mul(self, x: Tensor) -> Tensor:
        return silu_and_mul_torch(x)

    def rotary(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        return apply_rotary(x, cos, signed_sin)
