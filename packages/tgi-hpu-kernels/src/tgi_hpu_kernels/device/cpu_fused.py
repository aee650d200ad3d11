"""The CPU's fused decoder stack: one native call per layer for decode-sized bf16 steps.

A decode step of a small batch spends a third of its time in Python and in the per-op
native calls' argument handling (a dozen calls per layer). ``FusedStack`` runs each
``DecoderLayerSpec`` with one call to ``decoder_layer_bf16`` (``csrc/layer.c``), which chains
the same kernels the per-op path uses (same bits), on scratch buffers allocated once per step.
The per-layer argument blocks (weights, KV caches) are built once and kept; the per-step
block (sizes, metadata, buffers) once per step.

What does not live here: the kernels (``csrc/``), when the CPU backend takes this path
(``CpuDevice.decoder_stack``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tgi_hpu_kernels.attention import AttentionMetadata
from tgi_hpu_kernels.device.cpu_native import profiled
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers.kernels import DecoderLayerSpec

__all__ = ["FusedStack"]

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float


class _LayerWeights(ctypes.Structure):  # LayerWeights in csrc/layer.c
    _fields_ = [
        *((name, _P) for name in ("input_norm", "qkv_weight", "qkv_bias", "o_weight", "o_bias")),
        *((name, _P) for name in ("post_norm", "gate_up_weight", "gate_up_bias", "down_weight")),
        ("down_bias", _P),
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
        *((name, _I32) for name in ("hidden", "heads", "kv_heads", "head_dim", "inter")),
        ("block_size", _I32),
        ("num_threads", _I32),
    ]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _eligible(spec: DecoderLayerSpec, hidden_size: int) -> bool:
    """bf16, contiguous, and every matmul's inputs a multiple of 32 (the linear kernel's)."""
    tensors = [
        spec.input_norm,
        spec.qkv_weight,
        spec.o_weight,
        spec.post_norm,
        spec.gate_up_weight,
        spec.down_weight,
        *(
            b
            for b in (spec.qkv_bias, spec.o_bias, spec.gate_up_bias, spec.down_bias)
            if b is not None
        ),
    ]
    inner = (hidden_size, spec.num_heads * spec.head_dim, spec.down_weight.shape[1])
    return all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in tensors) and not any(
        size % 32 for size in inner
    )


class FusedStack:
    """Runs a model's decoder layers through ``decoder_layer_bf16``, one call per layer."""

    def __init__(self, library_function: Any) -> None:
        self._layer = library_function
        self._layer.argtypes = [_P, _P, _P, _P, _P, ctypes.c_int]
        self._layer.restype = ctypes.c_int
        # id(spec) -> (spec, its KV cache tensors, argument block): the spec is kept alive so
        # its id cannot be reused, and the caches checked so a new KVCache rebuilds the block.
        self._weights: dict[int, tuple[DecoderLayerSpec, Tensor, _LayerWeights]] = {}
        self._eligible: dict[int, bool] = {}

    def supports(self, layers: Sequence[DecoderLayerSpec], hidden: Tensor) -> bool:
        key = id(layers)
        if key not in self._eligible:
            self._eligible = {key: all(_eligible(spec, hidden.shape[1]) for spec in layers)}
        return self._eligible[key]

    def _layer_weights(self, spec: DecoderLayerSpec, kv: KVCache) -> _LayerWeights:
        cached = self._weights.get(id(spec))
        k_cache = kv.keys[spec.layer_idx]
        if cached is not None and cached[1] is k_cache:
            return cached[2]
        block = _LayerWeights(
            *(_ptr(t) for t in (spec.input_norm, spec.qkv_weight, spec.qkv_bias)),
            *(_ptr(t) for t in (spec.o_weight, spec.o_bias, spec.post_norm)),
            *(_ptr(t) for t in (spec.gate_up_weight, spec.gate_up_bias)),
            *(_ptr(t) for t in (spec.down_weight, spec.down_bias)),
            k_cache.data_ptr(),
            kv.values[spec.layer_idx].data_ptr(),
            spec.eps,
            spec.scale,
            spec.sliding_window or 0,
        )
        self._weights[id(spec)] = (spec, k_cache, block)
        return block

    def run(
        self,
        layers: Sequence[DecoderLayerSpec],
        hidden: Tensor,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
    ) -> tuple[Tensor, Tensor]:
        """The last layer's (output, residual) for embeddings ``hidden`` ``[rows, size]``."""
        paged = attn.paged
        assert paged is not None, "the fused stack reads the paged cache in place"
        first = layers[0]
        rows, size = hidden.shape
        heads, kv_heads, head_dim = first.num_heads, first.num_kv_heads, first.head_dim
        inter = first.down_weight.shape[1]
        buffers = [
            torch.empty((rows, width), dtype=hidden.dtype)
            for width in (size, (heads + 2 * kv_heads) * head_dim, heads * head_dim, 2 * inter)
        ]
        buffers.append(torch.empty((rows, inter), dtype=hidden.dtype))
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
            size,
            heads,
            kv_heads,
            head_dim,
            inter,
            kv.block_size,
            torch.get_num_threads(),
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
