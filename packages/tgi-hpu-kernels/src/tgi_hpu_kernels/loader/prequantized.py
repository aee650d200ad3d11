"""Pre-quantized 4-bit GPTQ and AWQ checkpoints, loaded into ``QuantizedLinear`` exactly.

Such a checkpoint declares itself in config.json (``quantization_config.quant_method``) and
stores, per linear ``<prefix>``, ``qweight``/``qzeros`` (int32 words of eight 4-bit values,
the lowest bits first) and fp16 ``scales``, one (scale, zero) per ``group_size`` inputs:

- GPTQ (AutoGPTQ's and transformers' layout): ``qweight`` [in / 8, out] packed along the
  inputs, ``qzeros`` [in / group, out / 8], ``scales`` [in / group, out], ``g_idx`` [in];
  ``w = (q - ((z + 1) mod 16)) * s``: AutoGPTQ's ``QuantLinear.pack`` stores ``zeros - 1``
  (a zero point of 0 wraps to 15) and its torch dequantization adds the 1 back in four bits
  (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py, ``zeros -= 1`` / ``zeros = zeros + 1``,
  ``bitwise_and(zeros, 2**bits - 1)``; TGI-Gaudi's GPTQ layer likewise); that is the "gptq"
  checkpoint_format, "gptq_v2" drops the offset.
- AWQ (AutoAWQ's GEMM layout): ``qweight`` [in, out / 8] packed along the outputs, ``qzeros``
  [in / group, out / 8] likewise, ``scales`` [in / group, out]; ``w = (q - z) * s``. Nibble
  ``i`` of word ``c`` holds output ``8c + [0, 2, 4, 6, 1, 3, 5, 7][i]`` (AutoAWQ's
  ``AWQ_ORDER`` in awq/modules/linear/gemm.py ``from_linear``; awq/utils/packing_utils.py
  unpacks with ``AWQ_REVERSE_ORDER`` = [0, 4, 1, 5, 2, 6, 3, 7]).

Both are our int4 exactly: ``q * s + min`` with ``min = -zero * s`` (float32 products of fp16
scales and small integers, so no rounding). ``prequantized_weights`` regroups the stream's
tensors per linear into ``PackedRows`` under ``<prefix>.weight``, so the model's loader puts
them with ``QuantizedLinear.load_packed`` (q/k/v and gate/up merge by row offset as usual).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tgi_hpu_kernels.layers import WeightQuantization
from tgi_hpu_kernels.layers.quantized import BLOCK
from tgi_hpu_kernels.layers.uint4_words import unpack_nibbles
from tgi_hpu_kernels.loader.quantize import QuantizationPlan

__all__ = [
    "PREQUANTIZED_METHODS",
    "PackedRows",
    "checkpoint_quantization",
    "prequantized_plan",
    "prequantized_weights",
]

PREQUANTIZED_METHODS = ("gptq", "awq")
_AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # word nibble holding output 8c + k
_PARTS = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True, eq=False)
class PackedRows:
    """A block of a linear's output rows in ``QuantizedLinear``'s int4 layout: codes uint8
    [rows, in / 2] (byte j of each 32-input block holds inputs j and j + 16), scales and mins
    float32 [rows, in / group]."""

    codes: Tensor
    scales: Tensor
    mins: Tensor


@dataclass(frozen=True)
class _Format:
    method: str
    group: int | None  # None: one group per row (group_size -1)


def checkpoint_quantization(
    hf_config: Mapping[str, Any], quantize: str | None, num_shard: int
) -> dict[str, Any] | None:
    """The checkpoint's gptq/awq ``quantization_config`` (None: it declares neither), checked
    against ``--quantize`` and ``--num-shard``.

    Raises:
        ValueError: one line: ``--quantize`` names another method, or gptq/awq for a checkpoint
            that is not, or a pre-quantized checkpoint with ``num_shard > 1``.
    """
    config = hf_config.get("quantization_config")
    if not isinstance(config, dict) or config.get("quant_method") not in PREQUANTIZED_METHODS:
        if quantize in PREQUANTIZED_METHODS:
            raise ValueError(
                f"--quantize {quantize} needs a checkpoint that declares it "
                f"(quantization_config.quant_method {quantize!r} in config.json)"
            )
        return None
    method = config["quant_method"]
    if quantize is not None and quantize != method:
        raise ValueError(
            f"--quantize {quantize} does not match the checkpoint's {method} quantization: "
            f"leave it unset or pass {method}"
        )
    if num_shard > 1:
        raise ValueError(
            f"--num-shard > 1 with a pre-quantized {method} checkpoint is not supported yet"
        )
    return dict(config)


def prequantized_plan(quantization_config: Mapping[str, Any]) -> QuantizationPlan:
    """int4 projections in the checkpoint's groups, the LM head dense (as these formats keep it).

    Raises:
        ValueError: one line naming what the checkpoint uses that is not supported.
    """
    fmt = _parse(quantization_config)
    per = "per channel" if fmt.group is None else f"group {fmt.group}"
    return QuantizationPlan(
        WeightQuantization(4, fmt.group), None, f"pre-quantized {fmt.method} checkpoint ({per})"
    )


def prequantized_weights(
    quantization_config: Mapping[str, Any], weights: Iterable[tuple[str, Tensor]]
) -> Iterator[tuple[str, Tensor | PackedRows]]:
    """``weights`` with each quantized linear's tensors replaced by ``<prefix>.weight`` ->
    ``PackedRows``, yielded once all its parts have come (other tensors pass unchanged).

    Raises:
        ValueError: an unsupported format, act-order ``g_idx``, a missing part, or shapes
            that do not fit together (one line naming the tensor).
    """
    fmt = _parse(quantization_config)
    needed = {"qweight", "qzeros", "scales", *(("g_idx",) if fmt.method == "gptq" else ())}
    pending: dict[str, dict[str, Tensor]] = {}
    for name, tensor in weights:
        prefix, _, part = name.rpartition(".")
        if part not in _PARTS:
            yield name, tensor
            continue
        parts = pending.setdefault(prefix, {})
        parts[part] = tensor
        if needed <= parts.keys():
            yield f"{prefix}.weight", _packed_rows(fmt, prefix, pending.pop(prefix))
    for prefix, parts in pending.items():  # g_idx is optional: GPTQ linears without one
        missing = [part for part in ("qweight", "qzeros", "scales") if part not in parts]
        if missing:
            raise ValueError(f"{fmt.method} checkpoint is missing {prefix}.{missing[0]}")
        yield f"{prefix}.weight", _packed_rows(fmt, prefix, parts)


def _parse(config: Mapping[str, Any]) -> _Format:
    method = str(config.get("quant_method"))
    where = f"{method} checkpoint"
    if method not in PREQUANTIZED_METHODS:
        raise ValueError(f"quant_method {method!r} is not {' or '.join(PREQUANTIZED_METHODS)}")
    if config.get("bits") != 4:
        raise ValueError(
            f"{where}: {config.get('bits')}-bit weights are not supported (4-bit only)"
        )
    group = config.get("group_size")
    if not isinstance(group, int) or (group != -1 and (group <= 0 or group % BLOCK)):
        raise ValueError(
            f"{where}: group_size {group} is not supported (a multiple of {BLOCK}, or -1)"
        )
    if config.get("lm_head"):
        raise ValueError(f"{where}: a quantized lm_head is not supported")
    if method == "gptq":
        if config.get("desc_act"):
            raise ValueError(f"{where}: act-order (desc_act) is not supported")
        if config.get("checkpoint_format", "gptq") != "gptq":
            raise ValueError(
                f"{where}: checkpoint_format {config['checkpoint_format']!r} is not supported "
                "(AutoGPTQ's 'gptq' only)"
            )
    else:
        if str(config.get("version", "gemm")).lower() != "gemm":
            raise ValueError(f"{where}: version {config['version']!r} is not supported (gemm only)")
        if not config.get("zero_point", True):
            raise ValueError(f"{where}: zero_point false is not supported")
    return _Format(method, None if group == -1 else group)


def _packed_rows(fmt: _Format, prefix: str, parts: Mapping[str, Tensor]) -> PackedRows:
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    if fmt.method == "gptq":
        inputs, outputs = qweight.shape[0] * 8, qweight.shape[1]
        codes = unpack_nibbles(qweight).transpose(1, 2).reshape(inputs, outputs)  # [in, out]
        # the v1 offset (above), in four bits: a zero point of 0 was stored as 15 (-1)
        zeros = ((unpack_nibbles(qzeros).flatten(1) + 1) & 0xF).to(torch.float32)
    else:
        inputs, outputs = qweight.shape[0], qweight.shape[1] * 8
        order = list(_AWQ_REVERSE_ORDER)
        codes = unpack_nibbles(qweight)[..., order].flatten(1)
        zeros = unpack_nibbles(qzeros)[..., order].flatten(1).to(torch.float32)
    group = inputs if fmt.group is None else fmt.group
    groups = inputs // group
    if inputs % group or scales.shape != (groups, outputs) or zeros.shape != (groups, outputs):
        raise ValueError(
            f"{fmt.method} checkpoint: {prefix} has qweight {tuple(qweight.shape)}, qzeros "
            f"{tuple(qzeros.shape)}, scales {tuple(scales.shape)}: not {fmt.method} 4-bit "
            f"in groups of {group}"
        )
    g_idx = parts.get("g_idx")
    if g_idx is not None and not torch.equal(g_idx.to(torch.int64), torch.arange(inputs) // group):
        raise ValueError(
            f"{fmt.method} checkpoint: {prefix}.g_idx is act-order (not input // group_size), "
            "which is not supported"
        )
    scale = scales.to(torch.float32)
    # our nibble layout: byte j of each 32-input block holds inputs j (low) and j + 16 (high)
    blocks = codes.t().reshape(outputs, inputs // BLOCK, 2, BLOCK // 2)
    packed = (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(outputs, inputs // 2)
    mins = -zeros * scale
    return PackedRows(packed.contiguous(), scale.t().contiguous(), mins.t().contiguous())
