"""GPT-BigCode (SantaCoder, StarCoder 1): learned positions, LayerNorms, a GELU MLP, MQA.

What differs from Llama:
- No rotary embedding: learned absolute positions (``wpe``, ``n_positions`` rows) are added
  to the token embeddings (and to ``inputs_embeds``), and q/k are never rotated. A
  ``--max-total-tokens`` past ``n_positions`` is refused at load: the table has no rows there.
- The checkpoint fuses q, k and v into ``c_attn``: with ``multi_query`` (the default) all
  queries then one key and one value head, without it one (q, k, v) triple per head; both
  are Falcon's grouped layout (1 and ``n_head`` groups), split by ``split_fused_qkv``.
- Pre-norm blocks with LayerNorms (``layer_norm_epsilon``), the MLP
  ``c_proj(gelu(c_fc(x)))`` (``activation_function``, tanh GELU by default; ``n_inner``
  defaults to 4x hidden), biases on every projection, tied embeddings by default. Config
  fields have GPT-2's names (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``).
- ``scale_attn_weights: false`` and cross-attention are refused. Under tensor parallelism a
  multi-query model's one KV head is replicated on every rank (as Falcon's); ``wpe`` is
  replicated. The CPU's fused decoder stack computes Llama's exact layer, so this model
  never uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar

from torch import Tensor, nn

from tgi_hpu_kernels.attention import AttentionMetadata
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers.gelu_mlp import GELU_APPROXIMATIONS, GeluMLP
from tgi_hpu_kernels.layers.layer_norm import LayerNorm
from tgi_hpu_kernels.layers.rotary import RotaryEmbedding
from tgi_hpu_kernels.models.config import ModelConfig, parse_common
from tgi_hpu_kernels.models.falcon import split_fused_qkv
from tgi_hpu_kernels.models.llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaModel,
    ModelBackend,
)
from tgi_hpu_kernels.models.starcoder2 import STARCODER2_LAYOUT
from tgi_hpu_kernels.parallel.sharding import TensorParallelLayout

__all__ = ["GPTBigCodeAttention", "GPTBigCodeBlock", "GPTBigCodeForCausalLM", "GPTBigCodeModel"]

# checkpoint name part -> ours (the fused c_attn is split, not renamed)
_RENAMES = (
    ("transformer.wte.", "model.embed_tokens."),
    ("transformer.wpe.", "model.wpe."),
    ("transformer.ln_f.", "model.norm."),
    ("transformer.h.", "model.layers."),
    (".ln_1.", ".input_layernorm."),
    (".ln_2.", ".post_attention_layernorm."),
    (".attn.c_proj.", ".self_attn.o_proj."),
)
_FUSED = ".attn.c_attn."


class GPTBigCodeAttention(LlamaAttention):
    """Llama's projections and paged attention without the rotation."""

    def forward(  # type: ignore[override]  # no rotary tables: positions are embedded
        self, x: Tensor, attn: AttentionMetadata, kv: KVCache
    ) -> Tensor:
        n = x.shape[0]
        qkv = self.qkv_proj(x).view(n, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        q, k, v = qkv.split((self.num_heads, self.num_kv_heads, self.num_kv_heads), dim=1)
        out: Tensor = self.o_proj(self.attn(q, k, v, attn, kv))
        return out


class GPTBigCodeBlock(nn.Module):
    """The pre-norm block in Llama's calling convention: ``(mlp_out, residual)`` go to the
    next layer, whose first norm adds them."""

    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = LayerNorm(size, eps)
        self.self_attn = GPTBigCodeAttention(config, layer_idx, backend)
        self.post_attention_layernorm = LayerNorm(size, eps)
        self.mlp = GeluMLP(
            size, config.intermediate_size, act=config.hidden_act, bias=True, kernels=backend
        )

    def forward(
        self, hidden: Tensor, residual: Tensor | None, attn: AttentionMetadata, kv: KVCache
    ) -> tuple[Tensor, Tensor]:
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_norm(hidden, residual)
        hidden = self.self_attn(hidden, attn, kv)
        hidden, residual = self.post_attention_layernorm.add_norm(hidden, residual)
        out: Tensor = self.mlp(hidden)
        return out, residual


class GPTBigCodeModel(LlamaModel):
    """Token plus position embeddings, GPT-BigCode blocks and a final LayerNorm."""

    def __init__(self, config: ModelConfig, backend: ModelBackend) -> None:
        super().__init__(config, backend)  # on the meta device: the Llama layers cost nothing
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(
            GPTBigCodeBlock(config, i, backend) for i in range(config.num_hidden_layers)
        )
        # Called as the RMSNorm it replaces: forward and add_norm.
        self.norm = LayerNorm(config.hidden_size, config.rms_norm_eps)  # type: ignore[assignment]
        self.fuse_layers = False  # the fused stack is Llama's layer (RMSNorm, gated SiLU, rope)

    def forward(  # type: ignore[override]  # positions, not rotary tables
        self,
        input_ids: Tensor,
        positions: Tensor,
        attn: AttentionMetadata,
        kv: KVCache,
        *,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = hidden + self.wpe(positions)
        residual: Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, attn, kv)
        if residual is None:  # no layers
            out: Tensor = self.norm(hidden)
            return out
        return self.norm.add_norm(hidden, residual)[0]


class GPTBigCodeForCausalLM(LlamaForCausalLM):
    packed_modules_mapping: ClassVar[dict[str, tuple[str, int]]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
    }
    # after checkpoint_tensors, GPT-BigCode's projections have StarCoder2's names
    tp_layout: ClassVar[TensorParallelLayout] = STARCODER2_LAYOUT

    def __init__(
        self, config: ModelConfig, *, backend: ModelBackend, rotary: RotaryEmbedding
    ) -> None:
        # The loader sizes the (here unused) rotary tables for max_total_tokens + 1 positions.
        max_total, learned = rotary.max_positions - 1, config.max_position_embeddings
        if max_total > learned:
            raise ValueError(
                f"GPT-BigCode has learned positions for {learned} tokens: --max-total-tokens "
                f"{max_total} is past them; use at most {learned}"
            )
        super().__init__(config, backend=backend, rotary=rotary)
        self.model = GPTBigCodeModel(config, backend)
        self.tie_weights()  # the head was tied to the replaced model's embedding

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """GPT-BigCode's field names read into ``ModelConfig`` (``rms_norm_eps`` holds the
        LayerNorms' ``layer_norm_epsilon``), with GPTBigCodeConfig's defaults. A GGUF
        (llama.cpp's ``starcoder``) gives Llama's names and is multi-query: llama.cpp
        converts nothing else.

        Raises:
            ValueError: unscaled attention, cross-attention, a non-GELU activation or a
                missing field.
        """
        if not raw.get("scale_attn_weights", True):
            raise ValueError("GPT-BigCode with scale_attn_weights=False is not supported")
        if raw.get("add_cross_attention"):
            raise ValueError("GPT-BigCode with add_cross_attention=True is not supported")
        hidden = int(raw.get("n_embd") or raw.get("hidden_size") or 768)
        heads = int(raw.get("n_head") or raw.get("num_attention_heads") or 12)
        multi_query = bool(raw.get("multi_query", True))
        with_defaults = {
            **raw,
            "vocab_size": raw.get("vocab_size", 50257),
            "hidden_size": hidden,
            "intermediate_size": raw.get("n_inner") or raw.get("intermediate_size") or 4 * hidden,
            "num_hidden_layers": raw.get("n_layer") or raw.get("num_hidden_layers") or 12,
            "num_attention_heads": heads,
            "num_key_value_heads": 1 if multi_query else heads,
            "head_dim": hidden // heads,
            "max_position_embeddings": (
                raw.get("n_positions") or raw.get("max_position_embeddings") or 1024
            ),
            "hidden_act": raw.get("activation_function", "gelu_pytorch_tanh"),
        }
        config = parse_common(with_defaults, activations=tuple(GELU_APPROXIMATIONS))
        eps = raw.get("layer_norm_epsilon") or raw.get("norm_epsilon") or 1e-5
        return replace(
            config,
            rms_norm_eps=float(eps),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
        )

    @classmethod
    def checkpoint_tensors(
        cls, weights: Iterable[tuple[str, Tensor]], raw: Mapping[str, Any]
    ) -> Iterator[tuple[str, Tensor]]:
        """Splits each ``c_attn`` weight or bias into Llama's q/k/v projections and renames
        the rest to Llama's tree.

        Raises:
            ValueError: a fused tensor other than a weight or bias (a pre-quantized
                checkpoint's), or one whose rows are not the config's.
        """
        config = cls.parse_config(raw)
        yield from split_fused_qkv(
            weights, config, renames=_RENAMES, fused=_FUSED, family="GPT-BigCode"
        )

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        attn: AttentionMetadata,
        kv: KVCache,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """``input_ids``/``positions`` ``[N]`` -> normed hidden states ``[N, hidden]``."""
        hidden: Tensor = self.model(input_ids, positions, attn, kv, inputs_embeds=inputs_embeds)
        return hidden
