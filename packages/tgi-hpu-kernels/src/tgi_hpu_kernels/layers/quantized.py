"""Weight-only quantized linear layers: int8 or int4 codes with group-wise float32 scales.

int8: ``w = q * scale``, ``q`` in [-127, 127], symmetric, one scale per ``group`` inputs of a
row (one group per row: per output channel, what bitsandbytes' LLM.int8 and EETQ store).
int4: ``w = q * scale + min``, ``q`` in [0, 15], one (scale, min) pair per group: llama.cpp's
Q4_1, which holds Q4_1 blocks exactly and Q4_0 or 4-bit bitsandbytes weights closely. Two codes
per byte, in llama.cpp's block layout (byte j of each 32-weight block holds weights j and
j + 16), so a native kernel unpacks a block with two masks.

Checkpoint tensors arrive dense (float32 from a GGUF, the checkpoint's dtype otherwise) and
are quantized row block by row block as they load (``QuantizedLinear.load_rows``): the dense
matrix never exists in the model. A pre-quantized GPTQ or AWQ checkpoint's rows arrive in this
layout already (``load_packed``, from ``loader/prequantized.py``). The activations stay in the
model's dtype; the device's ``LayerKernels.quantized_linear`` does the math (a native kernel on
the CPU, a dequantize then matmul elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.layers.kernels import LayerKernels, TorchLayerKernels
from tgi_hpu_kernels.layers.linear import Linear

__all__ = [
    "QuantizedLMHead",
    "QuantizedLinear",
    "QuantizedWeight",
    "WeightQuantization",
    "dequantize",
    "quantize_rows",
]

BLOCK = 32  # the native kernels' unit: every group is a whole number of blocks


@dataclass(frozen=True)
class WeightQuantization:
    """A scheme: ``bits`` per weight, ``group`` inputs per scale (None: one per row)."""

    bits: Literal[4, 8]
    group: int | None = None

    def __str__(self) -> str:
        per = "per channel" if self.group is None else f"group {self.group}"
        return f"int{self.bits} ({per})"

    def group_for(self, in_features: int) -> int:
        return in_features if self.group is None else self.group


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A layer's codes and scales as the kernels take them (views of its buffers)."""

    bits: int
    group: int
    in_features: int
    out_features: int
    codes: Tensor  # int8 [out, in], or uint8 [out, in / 2] (int4)
    scales: Tensor  # float32 [out, in / group]
    mins: Tensor | None  # float32 [out, in / group] (int4 only)


def quantize_rows(w: Tensor, bits: int, group: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Dense ``[rows, inputs]`` -> (codes, scales, mins) of the scheme; float32 math."""
    rows, inputs = w.shape
    grouped = w.detach().to(torch.float32).reshape(rows, inputs // group, group)
    if bits == 8:
        scales = grouped.abs().amax(-1) / 127
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(grouped / safe[..., None]).clamp_(-127, 127).to(torch.int8)
        return codes.reshape(rows, inputs), scales, None
    low, high = grouped.amin(-1), grouped.amax(-1)
    scales = (high - low) / 15
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round((grouped - low[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
    blocks = q.reshape(rows, inputs // BLOCK, 2, BLOCK // 2)
    packed = blocks[:, :, 0] | (blocks[:, :, 1] << 4)
    return packed.reshape(rows, inputs // 2), scales, low


def dequantize(weight: QuantizedWeight) -> Tensor:
    """The dense float32 ``[out, in]`` matrix (torch ops; the reference and the fallback)."""
    rows, inputs, group = weight.out_features, weight.in_features, weight.group
    if weight.bits == 8:
        codes = weight.codes.to(torch.float32)
    else:
        packed = weight.codes.reshape(rows, inputs // BLOCK, BLOCK // 2)
        codes = torch.stack((packed & 0x0F, packed >> 4), dim=2).to(torch.float32)
    grouped = codes.reshape(rows, inputs // group, group) * weight.scales[..., None]
    if weight.mins is not None:
        grouped = grouped + weight.mins[..., None]
    return grouped.reshape(rows, inputs)


class QuantizedLinear(nn.Module):
    """``Linear`` with quantized weights; the same checkpoint name (``<name>.weight``) fills
    it through ``load_rows``. The bias, if any, stays a dense parameter."""

    codes: Tensor
    scales: Tensor
    mins: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: WeightQuantization,
        *,
        bias: bool = False,
        kernels: LayerKernels | None = None,
    ) -> None:
        super().__init__()
        group = scheme.group_for(in_features)
        if group % BLOCK or in_features % group:
            raise ValueError(
                f"{scheme} needs input sizes that are multiples of {group} "
                f"(and groups of a multiple of {BLOCK}), not {in_features}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.group = scheme, group
        width = in_features if scheme.bits == 8 else in_features // 2
        code_dtype = torch.int8 if scheme.bits == 8 else torch.uint8
        self.register_buffer("codes", torch.zeros(out_features, width, dtype=code_dtype))
        groups = (out_features, in_features // group)
        self.register_buffer("scales", torch.zeros(groups, dtype=torch.float32))
        mins = torch.zeros(groups, dtype=torch.float32) if scheme.bits == 4 else None
        self.register_buffer("mins", mins)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._kernels = kernels or TorchLayerKernels()

    @classmethod
    def like(cls, linear: Linear, scheme: WeightQuantization) -> QuantizedLinear:
        """An empty quantized layer of ``linear``'s shape, bias and kernels."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            scheme,
            bias=linear.bias is not None,
            kernels=linear._kernels,
        )
        if layer.bias is not None and linear.bias is not None:
            layer.bias = nn.Parameter(torch.empty_like(linear.bias), requires_grad=False)
        return layer

    @torch.no_grad()
    def load_rows(self, start: int, dense: Tensor) -> None:
        """Quantizes dense rows ``[n, in_features]`` into output rows ``[start, start + n)``."""
        rows = dense.shape[0]
        if dense.dim() != 2 or dense.shape[1] != self.in_features:
            raise ValueError(
                f"expected rows of {self.in_features} inputs, got {tuple(dense.shape)}"
            )
        if start < 0 or start + rows > self.out_features:
            raise ValueError(f"rows [{start}, {start + rows}) exceed {self.out_features} outputs")
        codes, scales, mins = quantize_rows(dense, self.scheme.bits, self.group)
        self.codes[start : start + rows] = codes
        self.scales[start : start + rows] = scales
        if mins is not None and self.mins is not None:
            self.mins[start : start + rows] = mins

    @torch.no_grad()
    def load_packed(self, start: int, codes: Tensor, scales: Tensor, mins: Tensor | None) -> None:
        """Copies rows already in this layer's scheme, laid out as ``quantize_rows`` returns
        them (a pre-quantized checkpoint's), into output rows ``[start, start + n)`` as is."""
        rows, width, groups = codes.shape[0], self.codes.shape[1], self.scales.shape[1]
        want_mins = None if self.mins is None else (rows, groups)
        if (
            codes.dtype != self.codes.dtype
            or codes.shape != (rows, width)
            or scales.shape != (rows, groups)
            or (None if mins is None else mins.shape) != want_mins
        ):
            raise ValueError(
                f"{self.scheme} rows need {self.codes.dtype} codes [n, {width}] and scales"
                f"{'' if self.mins is None else ' and mins'} [n, {groups}], got codes "
                f"{codes.dtype} {tuple(codes.shape)}, scales {tuple(scales.shape)}"
                f"{'' if mins is None else f', mins {tuple(mins.shape)}'}"
            )
        if start < 0 or start + rows > self.out_features:
            raise ValueError(f"rows [{start}, {start + rows}) exceed {self.out_features} outputs")
        self.codes[start : start + rows] = codes
        self.scales[start : start + rows] = scales
        if mins is not None and self.mins is not None:
            self.mins[start : start + rows] = mins

    def quantized(self) -> QuantizedWeight:
        return QuantizedWeight(
            bits=self.scheme.bits,
            group=self.group,
            in_features=self.in_features,
            out_features=self.out_features,
            codes=self.codes,
            scales=self.scales,
            mins=self.mins,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._kernels.quantized_linear(x, self.quantized(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme}"


class QuantizedLMHead(QuantizedLinear):
    """The LM head quantized: float32 logits, like ``LMHead``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).float()
