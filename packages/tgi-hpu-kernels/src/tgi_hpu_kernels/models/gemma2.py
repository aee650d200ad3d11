"""Gemma 2: Gemma (``gemma.py``) with two more norms per layer, soft-capping and local layers.

- The attention output is normed (``post_attention_layernorm``) before its residual add, and
  the MLP sits between ``pre_feedforward_layernorm`` and ``post_feedforward_layernorm``:
  four ``1 + w`` norms per layer.
- Scores are scaled by ``query_pre_attn_scalar ** -0.5`` (not ``head_dim``'s) and capped as
  ``cap * tanh(score / cap)`` (``attn_logit_softcapping``) before the mask and softmax; the
  final logits likewise (``final_logit_softcapping``, here in float32).
- Layers marked ``sliding_attention`` in ``layer_types`` (default: every even layer) see
  only their last ``sliding_window`` keys.
- The activation is ``hidden_activation`` (transformers reads no other key): the tanh GELU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from torch import Tensor

from tgi_hpu_kernels.attention import AttentionMetadata, PagedAttention
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers import RMSNorm
from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.models.gemma import (
    GemmaDecoderLayer,
    GemmaForCausalLM,
    GemmaModel,
    parse_gemma_config,
)
from tgi_hpu_kernels.models.llama import LlamaAttention, LlamaDecoderLayer, ModelBackend

__all__ = ["Gemma2ForCausalLM"]


def _cap(raw: Mapping[str, Any], key: str, default: float) -> float | None:
    """A soft-cap: transformers' default where the key is absent, none where it is null."""
    value = raw.get(key, default)
    return None if value is None else float(value)


def _sliding_windows(raw: Mapping[str, Any], num_layers: int) -> tuple[int | None, ...]:
    window = raw.get("sliding_window", 4096)
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)
    ]
    if window is None:
        return ()
    return tuple(int(window) if t == "sliding_attention" else None for t in layer_types)


class Gemma2Attention(LlamaAttention):
    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__(config, layer_idx, backend)
        self.attn = PagedAttention(
            layer_idx=layer_idx,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            sliding_window=config.sliding_window(layer_idx),
            backend=backend,
            scale=config.attention_scale,
            softcap=config.attn_logit_softcap,
        )


class Gemma2DecoderLayer(GemmaDecoderLayer):
    """Norms around both blocks; the residual stream is carried as in Llama's layer."""

    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__(config, layer_idx, backend)
        size, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Gemma2Attention(config, layer_idx, backend)
        self.pre_feedforward_layernorm = RMSNorm(size, eps, backend)
        self.post_feedforward_layernorm = RMSNorm(size, eps, backend)

    def forward(
        self,
        hidden: Tensor,
        residual: Tensor | None,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
    ) -> tuple[Tensor, Tensor]:
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_norm(hidden, residual)
        hidden = self.post_attention_layernorm(self.self_attn(hidden, *rope, attn, kv))
        hidden, residual = self.pre_feedforward_layernorm.add_norm(hidden, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class Gemma2Model(GemmaModel):
    layer_class: ClassVar[type[LlamaDecoderLayer]] = Gemma2DecoderLayer


class Gemma2ForCausalLM(GemmaForCausalLM):
    model_class: ClassVar[type[GemmaModel]] = Gemma2Model

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        config = parse_gemma_config(raw, {"hidden_activation": ("gelu_pytorch_tanh",)})
        scalar = float(raw.get("query_pre_attn_scalar", 256))
        return replace(
            config,
            sliding_windows=_sliding_windows(raw, config.num_hidden_layers),
            attention_scale=scalar**-0.5,
            attn_logit_softcap=_cap(raw, "attn_logit_softcapping", 50.0),
            final_logit_softcap=_cap(raw, "final_logit_softcapping", 30.0),
        )

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """Float32 logits, soft-capped as ``cap * tanh(logits / cap)`` where there is a cap."""
        logits = super().compute_logits(hidden)
        cap = self.config.final_logit_softcap
        return logits if cap is None else (logits / cap).tanh() * cap
