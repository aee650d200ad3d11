"""Which weights a model serves quantized (``--quantize``, or a GGUF's own types), and the
swap of its layers for quantized ones before the weights load.

TGI's weight-only values: ``bitsandbytes`` and ``eetq`` are int8 per output channel (what
LLM.int8 and EETQ store); ``bitsandbytes-nf4`` and ``bitsandbytes-fp4`` are int4 in groups of
64 (bitsandbytes' block size), on our affine int4 grid rather than NF4's or FP4's codebook.
The LM head stays dense under these, as in TGI.

A GGUF checkpoint without ``--quantize`` keeps its stored precision: 4-bit blocks (Q4_0,
Q4_1, Q4_K) become int4 in groups of 32, 5- to 8-bit ones (Q5_0, Q5_1, Q5_K, Q6_K, Q8_0) int8
in groups of 32 (a file mixing both, such as Q4_K_M, is int8 throughout), and the LM head
(``output``, or the tied ``token_embd``) likewise. The weights arrive dequantized and are
quantized again per group of 32 from each group's min and max: Q4_1 and Q8_0 blocks come
back exactly (to float32 rounding); Q4_0's and the K-quants' grids are re-fitted, close but
not bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from tgi_hpu_kernels.layers import (
    Linear,
    LMHead,
    QuantizedKernels,
    QuantizedLinear,
    QuantizedLMHead,
    WeightQuantization,
)

__all__ = [
    "PREQUANTIZED",
    "WEIGHT_ONLY",
    "QuantizationPlan",
    "apply_plan",
    "fit_plan",
    "gguf_plan",
    "plan_quantization",
    "repack_layers",
]

WEIGHT_ONLY: Mapping[str, WeightQuantization] = {
    "bitsandbytes": WeightQuantization(8),
    "eetq": WeightQuantization(8),
    "bitsandbytes-nf4": WeightQuantization(4, 64),
    "bitsandbytes-fp4": WeightQuantization(4, 64),
}
# Pre-quantized 4-bit checkpoints (their config's quant_method), read into int4 layers.
PREQUANTIZED = ("gptq", "awq")
_GGUF_BITS = {
    **dict.fromkeys(("Q4_0", "Q4_1", "Q4_K"), 4),
    **dict.fromkeys(("Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"), 8),
}
_GGUF_GROUP = 32
_PROJECTIONS = (
    *("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down"),
    *("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"),  # Mixtral's experts
)


@dataclass(frozen=True)
class QuantizationPlan:
    """What to quantize: the decoder's projections, the LM head (None: dense), and why."""

    linears: WeightQuantization | None
    head: WeightQuantization | None
    origin: str

    def describe(self) -> str:
        head = "dense" if self.head is None else str(self.head)
        linears = "dense" if self.linears is None else str(self.linears)
        return f"{linears} projections, {head} LM head ({self.origin})"


def plan_quantization(
    quantize: str | None, gguf_types: Mapping[str, str] | None
) -> QuantizationPlan | None:
    """The plan for ``--quantize`` (one of ``WEIGHT_ONLY``) or, without it, a GGUF's tensor
    types (GGUF tensor name -> type name); None: serve dense."""
    if quantize is not None:
        scheme = WEIGHT_ONLY.get(quantize)
        if scheme is None:
            raise ValueError(f"--quantize {quantize} is not a weight-only method")
        return QuantizationPlan(scheme, None, f"--quantize {quantize}")
    if gguf_types is None:
        return None
    return gguf_plan(gguf_types)


def gguf_plan(types: Mapping[str, str]) -> QuantizationPlan | None:
    """The stored precision of a GGUF's projections and head. Mixed files (Q4_K_M keeps some
    tensors in Q6_K) take the widest type's scheme for every projection, so no tensor loses
    precision; a dense (F16/F32) projection keeps them all dense."""
    # Matrices only: a projection's bias (Qwen2's attn_q.bias) is F32 in every file.
    kinds = {
        kind
        for name, kind in types.items()
        if name.endswith(".weight") and name.split(".")[-2] in _PROJECTIONS
    }
    head_type = types.get("output.weight", types.get("token_embd.weight"))
    linears, head = _gguf_scheme(kinds), _gguf_scheme({head_type} if head_type else set())
    if linears is None and head is None:
        return None
    stored = "/".join(sorted(kinds))
    return QuantizationPlan(linears, head, f"GGUF {stored} projections, {head_type} head")


def _gguf_scheme(kinds: set[str]) -> WeightQuantization | None:
    bits = [_GGUF_BITS.get(kind) for kind in kinds]
    if not bits or None in bits:
        return None
    return WeightQuantization(4 if max(b or 0 for b in bits) == 4 else 8, _GGUF_GROUP)


def fit_plan(plan: QuantizationPlan, kernels: QuantizedKernels) -> QuantizationPlan:
    """``plan`` as the device's kernels take it: int4 groups with integer zero points where
    they need them (Gaudi's), and an LM head of a width they lack kept dense.

    Raises:
        ValueError: projections of a width the device has no kernel for (one line).
    """
    linears, head = plan.linears, plan.head
    if linears is not None and linears.bits not in kernels.bits:
        raise ValueError(
            f"{plan.origin}: no weight-only int{linears.bits} kernels on {kernels.device}"
        )
    if head is not None and head.bits not in kernels.bits:
        head = None
    if kernels.integer_zero_points:
        linears = None if linears is None else replace(linears, integer_zeros=True)
        head = None if head is None else replace(head, integer_zeros=True)
    return replace(plan, linears=linears, head=head)


def repack_layers(model: nn.Module) -> int:
    """Hands every loaded quantized layer to its device's own layout, where it has one
    (``QuantizedLinear.repack``); how many it repacked.

    Raises:
        ValueError: a layer the layout cannot hold (one line naming it).
    """
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            try:
                count += module.repack()
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
    return count


def apply_plan(model: nn.Module, plan: QuantizationPlan) -> int:
    """Swaps the decoder's ``Linear`` layers (and the LM head) for empty quantized ones, on
    the meta device, before the weights load. Returns how many layers were swapped.

    Raises:
        ValueError: a layer's input size does not fit the scheme's groups.
    """
    swaps: list[tuple[nn.Module, str, QuantizedLinear]] = []
    with torch.device("meta"):
        for name, module in model.named_modules():
            for child_name, child in module.named_children():
                full = f"{name}.{child_name}" if name else child_name
                scheme = plan.head if isinstance(child, LMHead) else plan.linears
                if scheme is None or not isinstance(child, Linear):
                    continue
                try:
                    cls = QuantizedLMHead if isinstance(child, LMHead) else QuantizedLinear
                    swaps.append((module, child_name, cls.like(child, scheme)))
                except ValueError as err:
                    raise ValueError(f"{plan.origin}: {full}: {err}") from None
    for parent, child_name, quantized in swaps:
        setattr(parent, child_name, quantized)
    return len(swaps)
