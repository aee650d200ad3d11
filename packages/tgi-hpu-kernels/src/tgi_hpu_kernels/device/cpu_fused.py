"""The CPU's fused decoder stack: one native call per layer for decode-sized bf16 steps.

A decode step of a small batch spends a third of its time in Python and in the per-op
native calls' argument handling (a dozen calls per layer). ``FusedStack`` runs each
``DecoderLayerSpec`` with one call to ``decoder_layer_bf16`` (``csrc/layer.c``), which chains
the same kernels the per-op path uses (same bits), on scratch buffers allocated once per step.
Projections are dense bf16 matrices, or in a weight-only quantized model int4/int8 codes
(``layers/quantized.py``), which the layer runs through the per-op path's float32 kernels
with its conversions. The per-layer argument blocks (weights, KV caches) are built once and
kept; the per-step block (sizes, metadata, buffers) once per step.

What does not live here: the kernels (``csrc/``), when the CPU backend takes this path
(``CpuDevice.decoder_stack``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from tgi_hpu_kernels.attention import AttentionMetadata
from tgi_hpu_kernels.device.cpu_native import profiled
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers.kernels import DecoderLayerSpec
from tgi_hpu_kernels.layers.quantized import QuantizedWeight

__all__ = ["FusedStack", "WeightLayout"]

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
# What a stack's projections hold: dense bf16 matrices, or int4/int8 codes throughout.
WeightLayout = Literal["dense", "quantized"]
_CODE_DTYPES = {4: torch.uint8, 8: torch.int8}


class _Projection(ctypes.Structure):  # Projection in csrc/layer.c
    _fields_ = [
        ("bits", _I32),  # 0: dense bf16
        ("group", _I32),
        *((name, _P) for name in ("weight", "bias", "scales", "mins")),
    ]


class _LayerWeights(ctypes.Structure):  # LayerWeights in csrc/layer.c
    _fields_ = [
        ("input_norm", _P),
        ("post_norm", _P),
        *((name, _Projection) for name in ("qkv", "o", "gate_up", "down")),
        ("k_cache", _P),
        ("v_cache", _P),
        ("eps", _F32),
        ("scale", _F32),
        ("window", _I32),
    ]


class _StepArgs(ctypes.Structure):  # StepArgs in csrc/layer.c
    _fields_ = [
        ("rows", _I64),
        ("cos", _P),
        ("sin", _P),
        ("slots", _P),
        ("tables", _P),
        ("table_stride", _I64),
        ("seq_lens", _P),
        ("query_starts", _P),
        ("query_lens", _P),
        ("num_seqs", _I32),
        *((name, _P) for name in ("normed", "qkv", "attn", "gate_up", "act")),
        *((name, _P) for name in ("wide_in", "wide_out")),
        *((name, _I32) for name in ("hidden", "heads", "kv_heads", "head_dim", "inter")),
        ("block_size", _I32),
        ("num_threads", _I32),
        ("quant_amx", _I32),
    ]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _inputs(weight: Tensor | QuantizedWeight) -> int:
    return weight.in_features if isinstance(weight, QuantizedWeight) else weight.shape[1]


def _quantized_ok(weight: QuantizedWeight) -> bool:
    """int4 with mins or int8 without, in ``linear_quant.c``'s layout and groups."""
    parts = (weight.codes, weight.scales, *(() if weight.mins is None else (weight.mins,)))
    return (
        weight.uint4 is None  # not repacked for another device's kernels
        and weight.codes.dtype == _CODE_DTYPES.get(weight.bits)
        and (weight.mins is not None) == (weight.bits == 4)
        and all(t.is_contiguous() for t in parts)
        and all(t.dtype == torch.float32 for t in parts[1:])
        and weight.group % 32 == 0
        and weight.in_features % weight.group == 0
    )


def _layout(spec: DecoderLayerSpec, hidden_size: int) -> WeightLayout | None:
    """What the fused layer takes: bf16 norms; either four contiguous bf16 projections (and
    biases) or four quantized ones (biases of any float dtype, widened as the per-op path
    does), not a mix; every matmul's inputs a multiple of 32 (the linear kernels')."""
    weights = [weight for weight, _ in spec.projections()]
    biases = [bias for _, bias in spec.projections() if bias is not None]
    norms = (spec.input_norm, spec.post_norm)
    inner = (hidden_size, spec.num_heads * spec.head_dim, _inputs(spec.down_weight))
    if any(size % 32 for size in inner) or not all(map(_bf16, norms)):
        return None
    dense = [w for w in weights if isinstance(w, Tensor)]
    if len(dense) == len(weights):
        return "dense" if all(map(_bf16, (*dense, *biases))) else None
    quantized = [w for w in weights if isinstance(w, QuantizedWeight)]
    if len(quantized) == len(weights) and all(map(_quantized_ok, quantized)):
        return "quantized" if all(b.is_floating_point() for b in biases) else None
    return None


def _bf16(t: Tensor) -> bool:
    return t.dtype == torch.bfloat16 and t.is_contiguous()


def _projection(
    weight: Tensor | QuantizedWeight, bias: Tensor | None, keep: list[Tensor]
) -> _Projection:
    if isinstance(weight, Tensor):
        return _Projection(0, 0, weight.data_ptr(), _ptr(bias), None, None)
    # The per-op path hands the kernel bias.float() (exact from bf16): converted once here,
    # and kept in ``keep`` as long as the argument block points at it.
    bias32 = None if bias is None else bias.float().contiguous()
    if bias32 is not None:
        keep.append(bias32)
    return _Projection(
        weight.bits,
        weight.group,
        weight.codes.data_ptr(),
        _ptr(bias32),
        weight.scales.data_ptr(),
        _ptr(weight.mins),
    )


class FusedStack:
    """Runs a model's decoder layers through ``decoder_layer_bf16``, one call per layer."""

    def __init__(self, library_function: Any) -> None:
        self._layer = library_function
        self._layer.argtypes = [_P, _P, _P, _P, _P, ctypes.c_int]
        self._layer.restype = ctypes.c_int
        # id(spec) -> (spec, its KV cache tensors, argument block, tensors the block points
        # at that nothing else holds): the spec is kept alive so its id cannot be reused, and
        # the caches checked so a new KVCache rebuilds the block.
        self._weights: dict[int, tuple[DecoderLayerSpec, Tensor, _LayerWeights, list[Tensor]]]
        self._weights = {}
        self._layouts: dict[int, WeightLayout | None] = {}

    def layout(self, layers: Sequence[DecoderLayerSpec], hidden: Tensor) -> WeightLayout | None:
        """The layers' weight layout if every layer can run fused (all of one layout)."""
        key = id(layers)
        if key not in self._layouts:
            found = {_layout(spec, hidden.shape[1]) for spec in layers}
            self._layouts = {key: found.pop() if len(found) == 1 else None}
        return self._layouts[key]

    def _layer_weights(self, spec: DecoderLayerSpec, kv: KVCache) -> _LayerWeights:
        cached = self._weights.get(id(spec))
        k_cache = kv.keys[spec.layer_idx]
        if cached is not None and cached[1] is k_cache:
            return cached[2]
        keep: list[Tensor] = []
        block = _LayerWeights(
            spec.input_norm.data_ptr(),
            spec.post_norm.data_ptr(),
            *(_projection(weight, bias, keep) for weight, bias in spec.projections()),
            k_cache.data_ptr(),
            kv.values[spec.layer_idx].data_ptr(),
            spec.eps,
            spec.scale,
            spec.sliding_window or 0,
        )
        self._weights[id(spec)] = (spec, k_cache, block, keep)
        return block

    def run(
        self,
        layers: Sequence[DecoderLayerSpec],
        hidden: Tensor,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
        *,
        quantized_amx: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """The last layer's (output, residual) for embeddings ``hidden`` ``[rows, size]``;
        ``quantized_amx``: quantized projections take the AMX kernel, as the per-op path's
        ``CpuDevice.quantized_linear`` does for these rows."""
        paged = attn.paged
        assert paged is not None, "the fused stack reads the paged cache in place"
        first = layers[0]
        rows, size = hidden.shape
        heads, kv_heads, head_dim = first.num_heads, first.num_kv_heads, first.head_dim
        inter = _inputs(first.down_weight)
        qkv_width, q_width = (heads + 2 * kv_heads) * head_dim, heads * head_dim
        buffers = [
            torch.empty((rows, width), dtype=hidden.dtype)
            for width in (size, qkv_width, q_width, 2 * inter, inter)
        ]
        # Quantized projections: float32 copies of their input rows, and their outputs.
        wide = [
            torch.empty((rows, width), dtype=torch.float32)
            for width in (max(size, q_width, inter), max(qkv_width, size, 2 * inter))
            if not isinstance(first.qkv_weight, Tensor)
        ]
        wide_pointers: list[int | None] = [b.data_ptr() for b in wide] or [None, None]
        cos, sin = (t.contiguous() for t in rope)
        step = _StepArgs(
            rows,
            cos.data_ptr(),
            sin.data_ptr(),
            attn.slots.data_ptr(),
            paged.block_tables.data_ptr(),
            paged.block_tables.stride(0),
            paged.seq_lens.data_ptr(),
            paged.query_starts.data_ptr(),
            paged.query_lens.data_ptr(),
            paged.seq_lens.shape[0],
            *(b.data_ptr() for b in buffers),
            *wide_pointers,
            size,
            heads,
            kv_heads,
            head_dim,
            inter,
            kv.block_size,
            torch.get_num_threads(),
            quantized_amx,
        )
        residual = torch.empty_like(hidden)
        outputs = (torch.empty_like(hidden), torch.empty_like(hidden))
        source = hidden
        for i, spec in enumerate(layers):
            out = outputs[i % 2]
            with profiled("native::decoder_layer"):
                status = self._layer(
                    ctypes.byref(step),
                    ctypes.byref(self._layer_weights(spec, kv)),
                    source.data_ptr(),
                    residual.data_ptr(),
                    out.data_ptr(),
                    i == 0,
                )
            if status != 0:
                raise ValueError(f"native decoder layer {i} failed with status {status}")
            source = out
        return source, residual
