"""Gaudi's int4 weight layout: what ``torch.ops.hpu.convert_from_uint4`` reads.

The layout of Intel Neural Compressor's ``HPUWeightOnlyLinear`` and of TGI-Gaudi's GPTQ and
AWQ layers, which repack their checkpoints into it:

- ``qweight`` int32 ``[in, out / 8]``: word ``c`` of input ``i`` holds outputs ``8c`` to
  ``8c + 7``, four bits each, the lowest bits first;
- ``qzeros`` int32 ``[in / group, out / 8]``: each (group, output)'s integer zero point,
  packed the same way;
- ``scales`` ``[in / group, out]``, in the dtype the model runs in (INC stores bf16).

``weight[i, o] = (q[i, o] - z[i // group, o]) * s[i // group, o]``, in the activations' dtype;
the matmul that follows is ``x @ weight`` (``[in, out]``, not ``Linear``'s ``[out, in]``).
Only integer zero points fit: GPTQ's and AWQ's do, and so do int4 groups quantized with
``WeightQuantization.integer_zeros`` (``quantized.py``), which a device needing this layout
asks for (``QuantizedKernels.integer_zero_points``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Uint4Words", "dequantize_words", "pack_nibbles", "unpack_nibbles"]

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


@dataclass(frozen=True, eq=False)
class Uint4Words:
    """One linear's weights in Gaudi's layout (module docstring)."""

    qweight: Tensor  # int32 [in, out / 8]
    qzeros: Tensor  # int32 [in / group, out / 8]
    scales: Tensor  # [in / group, out]

    @property
    def group(self) -> int:
        return self.qweight.shape[0] // self.qzeros.shape[0]


def pack_nibbles(values: Tensor) -> Tensor:
    """Values 0..15 ``[rows, n]`` (``n`` a multiple of 8) -> int32 words ``[rows, n / 8]``,
    value ``8c + k`` in bits ``4k`` to ``4k + 3`` of word ``c``."""
    rows, n = values.shape
    nibbles = values.to(torch.int32).reshape(rows, n // 8, 8) << _SHIFTS.to(values.device)
    # the eight nibbles occupy disjoint bits: their sum is their bitwise or (int64, then the
    # low 32 bits reinterpreted, since words with a high nibble of 8 or more are negative)
    words = nibbles.to(torch.int64).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_nibbles(words: Tensor) -> Tensor:
    """int32 words ``[..., m]`` -> each word's eight values ``[..., m, 8]`` (uint8), the
    lowest bits first (GPTQ's and AWQ's checkpoints pack theirs so too)."""
    shifted = words.to(torch.int32)[..., None] >> _SHIFTS.to(words.device)
    return (shifted & 0xF).to(torch.uint8)


def dequantize_words(words: Uint4Words) -> Tensor:
    """The dense float32 ``[out, in]`` matrix (``Linear``'s orientation): the reference of
    ``convert_from_uint4``, and the fallback where that op is absent."""
    group = words.group
    q = unpack_nibbles(words.qweight).flatten(1).to(torch.float32)  # [in, out]
    z = unpack_nibbles(words.qzeros).flatten(1).to(torch.float32).repeat_interleave(group, dim=0)
    s = words.scales.to(torch.float32).repeat_interleave(group, dim=0)
    return ((q - z) * s).t()
