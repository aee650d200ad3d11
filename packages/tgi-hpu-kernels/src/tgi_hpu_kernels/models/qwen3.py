"""Qwen3: the Qwen2 decoder with RMSNorms on each head's queries and keys, no q/k/v bias.

What differs from Qwen2: ``q_norm`` and ``k_norm`` (an RMSNorm over ``head_dim``, weights
shared by every head) normalise each head's queries and keys after the projection and
before the rotary embedding; ``attention_bias`` (default false) puts a bias on q, k, v and o
alike; ``head_dim`` is explicit. Sliding windows follow Qwen2's rule. The q/k norms are
replicated across tensor-parallel ranks (each rank normalises its own heads). The CPU's
fused decoder stack computes Llama's exact layer, so this model never uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import torch
from torch import Tensor

from tgi_hpu_kernels.attention import AttentionMetadata
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers import RMSNorm, RotaryEmbedding
from tgi_hpu_kernels.models.config import ModelConfig, parse_common
from tgi_hpu_kernels.models.llama import LlamaAttention, LlamaDecoderLayer, ModelBackend
from tgi_hpu_kernels.models.qwen2 import Qwen2ForCausalLM, sliding_windows

__all__ = ["Qwen3Attention", "Qwen3ForCausalLM"]


class Qwen3Attention(LlamaAttention):
    """Llama's attention with each head's q and k RMS-normalised before the rotation."""

    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__(config, layer_idx, backend)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, backend)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, backend)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attn: AttentionMetadata, kv: KVCache
    ) -> Tensor:
        n, d = x.shape[0], self.head_dim
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(n, heads + 2 * kv_heads, d)
        q = self.q_norm(qkv[:, :heads].reshape(-1, d)).view(n, heads, d)
        k = self.k_norm(qkv[:, heads : heads + kv_heads].reshape(-1, d)).view(n, kv_heads, d)
        v = qkv[:, heads + kv_heads :]
        qk = self._kernels.rotary(torch.cat((q, k), dim=1), cos, sin)
        out: Tensor = self.o_proj(self.attn(qk[:, :heads], qk[:, heads:], v, attn, kv))
        return out


class Qwen3ForCausalLM(Qwen2ForCausalLM):
    def __init__(
        self, config: ModelConfig, *, backend: ModelBackend, rotary: RotaryEmbedding
    ) -> None:
        super().__init__(config, backend=backend, rotary=rotary)
        for i, layer in enumerate(self.model.layers):
            cast(LlamaDecoderLayer, layer).self_attn = Qwen3Attention(config, i, backend)
        self.model.fuse_layers = False  # the fused stack has no q/k norms

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """``attention_bias`` covers q, k, v and o (none by default)."""
        config = parse_common(raw)
        bias = bool(raw.get("attention_bias", False))
        windows = sliding_windows(raw, config.num_hidden_layers)
        return replace(config, qkv_bias=bias, o_bias=bias, sliding_windows=windows)
