"""StarCoder2: the Llama decoder with LayerNorm, a plain GELU MLP and biases.

What differs from Llama: both norms (and the final one) are LayerNorm with a bias, eps
``norm_epsilon``; the MLP is ``c_proj(gelu(c_fc(x)))`` with ``hidden_act`` one of the GELUs
(``gelu_pytorch_tanh`` in every released checkpoint), no gate; ``use_bias`` (default true)
puts a bias on q, k, v, o, c_fc and c_proj; ``sliding_window``, when set, limits every layer
as in Mistral; embeddings are tied unless the config says otherwise. Tensor parallelism
splits c_fc by rows and c_proj by columns (its bias added once, by rank 0). The CPU's fused
decoder stack computes Llama's exact layer, so this model never uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from torch import Tensor, nn

from tgi_hpu_kernels.attention import AttentionMetadata
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers.gelu_mlp import GELU_APPROXIMATIONS, GeluMLP
from tgi_hpu_kernels.layers.layer_norm import LayerNorm
from tgi_hpu_kernels.layers.rotary import RotaryEmbedding
from tgi_hpu_kernels.models.config import ModelConfig, parse_common
from tgi_hpu_kernels.models.llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaModel,
    ModelBackend,
)
from tgi_hpu_kernels.parallel.sharding import TensorParallelLayout

__all__ = ["Starcoder2DecoderLayer", "Starcoder2ForCausalLM", "Starcoder2Model"]

STARCODER2_LAYOUT = TensorParallelLayout(
    column=(".q_proj.", ".k_proj.", ".v_proj.", ".c_fc."),
    row=(".o_proj.", ".c_proj."),
)


class Starcoder2DecoderLayer(nn.Module):
    """Llama's pre-norm block with LayerNorms and the GELU MLP; same calling convention
    (``(mlp_out, residual)`` carried to the next layer)."""

    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = LayerNorm(size, eps)
        self.self_attn = LlamaAttention(config, layer_idx, backend)
        self.post_attention_layernorm = LayerNorm(size, eps)
        self.mlp = GeluMLP(
            size,
            config.intermediate_size,
            act=config.hidden_act,
            bias=config.mlp_bias,
            kernels=backend,
        )

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
        hidden = self.self_attn(hidden, *rope, attn, kv)
        hidden, residual = self.post_attention_layernorm.add_norm(hidden, residual)
        out: Tensor = self.mlp(hidden)
        return out, residual


class Starcoder2Model(LlamaModel):
    """``LlamaModel``'s embedding and layer loop over StarCoder2 layers and a final LayerNorm."""

    def __init__(self, config: ModelConfig, backend: ModelBackend) -> None:
        super().__init__(config, backend)  # on the meta device: the Llama layers cost nothing
        self.layers = nn.ModuleList(
            Starcoder2DecoderLayer(config, i, backend) for i in range(config.num_hidden_layers)
        )
        # Called as the RMSNorm it replaces: forward and add_norm.
        self.norm = LayerNorm(config.hidden_size, config.rms_norm_eps)  # type: ignore[assignment]
        self.fuse_layers = False  # the fused stack is Llama's layer (RMSNorm, gated SiLU)


class Starcoder2ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping: ClassVar[dict[str, tuple[str, int]]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
    }
    tp_layout: ClassVar[TensorParallelLayout] = STARCODER2_LAYOUT

    def __init__(
        self, config: ModelConfig, *, backend: ModelBackend, rotary: RotaryEmbedding
    ) -> None:
        super().__init__(config, backend=backend, rotary=rotary)
        self.model = Starcoder2Model(config, backend)
        self.tie_weights()  # the head was tied to the replaced model's embedding

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """``rms_norm_eps`` holds the LayerNorms' ``norm_epsilon``."""
        with_defaults = {"hidden_act": "gelu_pytorch_tanh", **raw}  # transformers' default
        config = parse_common(with_defaults, activations=tuple(GELU_APPROXIMATIONS))
        bias = bool(raw.get("use_bias", True))
        window = raw.get("sliding_window")
        windows = () if window is None else (int(window),) * config.num_hidden_layers
        return replace(
            config,
            rms_norm_eps=float(raw.get("norm_epsilon", 1e-5)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            qkv_bias=bias,
            o_bias=bias,
            mlp_bias=bias,
            sliding_windows=windows,
        )
