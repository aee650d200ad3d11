"""Weight-only quantized linear layers: int8 or int4 codes with group-wise float32 scales.

int8: ``w = q * scale``, ``q`` in [-127, 127], symmetric, one scale per ``group`` inputs of a
row (one group per row: per output channel, what bitsandbytes' LLM.int8 and EETQ store).
int4: ``w = q * scale + min``, ``q`` in [0, 15], one (scale, min) pair per group: llama.cpp's
Q4_1, which holds Q4_1 blocks exactly and Q4_0 or 4-bit bitsandbytes weights closely. Two codes
per byte, in llama.cpp's block layout (byte j of each 32-weight block holds weights j and
j + 16), so a native kernel unpacks a block with two masks.

A device whose kernel reads another layout (Gaudi's ``uint4_words.py``) takes the loaded
codes once (``QuantizedLinear.repack``); int4 groups then need integer zero points,
``w = (q - z) * scale``, which ``WeightQuantization.integer_zeros`` quantizes to.

Checkpoint tensors arrive dense (float32 from a GGUF, the checkpoint's dtype otherwise) and
are quantized row block by row block as they load (``QuantizedLinear.load_rows``): the dense
matrix never exists in the model. A pre-quantized GPTQ or AWQ checkpoint's rows arrive in this
layout already (``load_packed``, from ``loader/prequantized.py``). The activations stay in the
model's dtype; the device's ``LayerKernels.quantized_linear`` does the math (a native kernel on
the CPU, a dequantize then matmul elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.layers.kernels import LayerKernels, TorchLayerKernels
from tgi_hpu_kernels.layers.linear import Linear
from tgi_hpu_kernels.layers.uint4_words import Uint4Words, dequantize_words, pack_nibbles

__all__ = [
    "QuantizedKernels",
    "QuantizedLMHead",
    "QuantizedLinear",
    "QuantizedWeight",
    "WeightQuantization",
    "dequantize",
    "quantize_rows",
    "to_uint4_words",
]

BLOCK = 32  # the native kernels' unit: every group is a whole number of blocks


@dataclass(frozen=True)
class WeightQuantization:
    """A scheme: ``bits`` per weight, ``group`` inputs per scale (None: one per row);
    ``integer_zeros``: int4 groups whose min is a whole number of steps below zero."""

    bits: Literal[4, 8]
    group: int | None = None
    integer_zeros: bool = False

    def __str__(self) -> str:
        per = "per channel" if self.group is None else f"group {self.group}"
        zeros = ", integer zero points" if self.integer_zeros and self.bits == 4 else ""
        return f"int{self.bits} ({per}{zeros})"

    def group_for(self, in_features: int) -> int:
        return in_features if self.group is None else self.group


@dataclass(frozen=True)
class QuantizedKernels:
    """What a device's weight-only kernels take: the code widths (none: ``--quantize`` of
    these methods is refused there), and whether int4 groups need integer zero points."""

    device: str
    bits: frozenset[int] = frozenset()
    integer_zero_points: bool = False


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
    # the same weights in Gaudi's layout, once the device took them (``repack``); the codes,
    # scales and mins are then empty
    uint4: Uint4Words | None = None


def quantize_rows(
    w: Tensor, bits: int, group: int, *, integer_zeros: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Dense ``[rows, inputs]`` -> (codes, scales, mins) of the scheme; float32 math.

    int4 spans each group's [min, max]; with ``integer_zeros`` it spans [min(min, 0),
    max(max, 0)] and moves the min to a whole number ``z`` of steps below zero, so that
    ``w = (q - z) * scale`` (asymmetric round-to-nearest, as INC's RTN)."""
    rows, inputs = w.shape
    grouped = w.detach().to(torch.float32).reshape(rows, inputs // group, group)
    if bits == 8:
        scales = grouped.abs().amax(-1) / 127
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(grouped / safe[..., None]).clamp_(-127, 127).to(torch.int8)
        return codes.reshape(rows, inputs), scales, None
    low, high = grouped.amin(-1), grouped.amax(-1)
    if integer_zeros:
        low, high = low.clamp(max=0), high.clamp(min=0)
    scales = (high - low) / 15
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    if integer_zeros:
        low = -torch.round(-low / safe).clamp_(0, 15) * scales
    q = torch.round((grouped - low[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
    blocks = q.reshape(rows, inputs // BLOCK, 2, BLOCK // 2)
    packed = blocks[:, :, 0] | (blocks[:, :, 1] << 4)
    return packed.reshape(rows, inputs // 2), scales, low


def _codes(weight: QuantizedWeight) -> Tensor:
    """int4 codes ``[out, in]`` (uint8), unpacked from the block layout."""
    packed = weight.codes.reshape(weight.out_features, weight.in_features // BLOCK, BLOCK // 2)
    return torch.stack((packed & 0x0F, packed >> 4), dim=2).reshape(weight.out_features, -1)


def dequantize(weight: QuantizedWeight) -> Tensor:
    """The dense float32 ``[out, in]`` matrix (torch ops; the reference and the fallback)."""
    if weight.uint4 is not None:
        return dequantize_words(weight.uint4)
    rows, inputs, group = weight.out_features, weight.in_features, weight.group
    codes = (weight.codes if weight.bits == 8 else _codes(weight)).to(torch.float32)
    grouped = codes.reshape(rows, inputs // group, group) * weight.scales[..., None]
    if weight.mins is not None:
        grouped = grouped + weight.mins[..., None]
    return grouped.reshape(rows, inputs)


def to_uint4_words(weight: QuantizedWeight, scale_dtype: torch.dtype) -> Uint4Words:
    """An int4 weight with integer zero points in Gaudi's layout (``uint4_words.py``), its
    scales in ``scale_dtype``; packed on the CPU (as INC packs), returned on the weight's device.

    Raises:
        ValueError: int8 codes, outputs not a multiple of 8, or a group whose min is not a
            whole number of steps from 0 to 15 below zero (a Q4_1 block's, say: quantize
            with ``integer_zeros``).
    """
    if weight.bits != 4 or weight.mins is None:
        raise ValueError(f"Gaudi's uint4 layout holds int4 weights, not int{weight.bits}")
    if weight.out_features % 8:
        raise ValueError(f"Gaudi's uint4 layout packs 8 outputs a word, not {weight.out_features}")
    device = weight.codes.device
    scales, mins = weight.scales.cpu(), weight.mins.cpu()
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    steps = -mins / safe
    zeros = torch.round(steps)
    whole = (steps - zeros).abs() <= 1e-3
    if not bool((whole & (zeros >= 0) & (zeros <= 15)).all()):
        raise ValueError("int4 groups need integer zero points (0..15) in Gaudi's uint4 layout")
    codes = _codes(replace(weight, codes=weight.codes.cpu()))
    return Uint4Words(
        qweight=pack_nibbles(codes.t()).to(device),
        qzeros=pack_nibbles(zeros.to(torch.uint8).t()).to(device),
        scales=scales.t().to(scale_dtype).contiguous().to(device),
    )


class QuantizedLinear(nn.Module):
    """``Linear`` with quantized weights; the same checkpoint name (``<name>.weight``) fills
    it through ``load_rows``. The bias, if any, stays a dense parameter."""

    codes: Tensor
    scales: Tensor
    mins: Tensor | None
    uint4_qweight: Tensor | None
    uint4_qzeros: Tensor | None
    uint4_scales: Tensor | None

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
        for name in ("uint4_qweight", "uint4_qzeros", "uint4_scales"):
            self.register_buffer(name, None)  # filled by ``repack`` on Gaudi
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
        codes, scales, mins = quantize_rows(
            dense, self.scheme.bits, self.group, integer_zeros=self.scheme.integer_zeros
        )
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

    @torch.no_grad()
    def repack(self) -> bool:
        """Once loaded: hands the weights to the device's own layout, where it has one
        (``LayerKernels.pack_quantized``), and empties the codes, scales and mins; whether
        it did (not twice)."""
        if self.uint4_qweight is not None:
            return False
        words = self._kernels.pack_quantized(self.quantized())
        if words is None:
            return False
        self.uint4_qweight, self.uint4_qzeros = words.qweight, words.qzeros
        self.uint4_scales = words.scales
        # new empty tensors, not views: a view would keep the codes' memory
        self.codes = self.codes.new_empty((0, self.codes.shape[1]))
        self.scales = self.scales.new_empty((0, self.scales.shape[1]))
        self.mins = None if self.mins is None else self.mins.new_empty((0, self.mins.shape[1]))
        return True

    def quantized(self) -> QuantizedWeight:
        words = None
        if self.uint4_qweight is not None:
            assert self.uint4_qzeros is not None and self.uint4_scales is not None
            words = Uint4Words(self.uint4_qweight, self.uint4_qzeros, self.uint4_scales)
        return QuantizedWeight(
            bits=self.scheme.bits,
            group=self.group,
            in_features=self.in_features,
            out_features=self.out_features,
            codes=self.codes,
            scales=self.scales,
            mins=self.mins,
            uint4=words,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._kernels.quantized_linear(x, self.quantized(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme}"


class QuantizedLMHead(QuantizedLinear):
    """The LM head quantized: float32 logits, like ``LMHead``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).float()
