"""Falcon (7B/40B/180B and the RW models): LayerNorms, a plain GELU MLP and fused q/k/v.

What differs from Llama:
- The checkpoint fuses q, k and v into ``query_key_value``, as ``num_kv_heads`` groups of
  (the group's query heads, its key head, its value head); multi-query (``multi_query``,
  the old architecture: one KV head) and per-head q/k/v (neither) are the same layout with
  1 and ``num_attention_heads`` groups. ``checkpoint_tensors`` splits it into Llama's
  q/k/v (and renames the other tensors to Llama's tree) before tensor-parallel slicing.
- The block: with ``parallel_attn`` (always in the new architecture) attention and MLP both
  read the layer's input and are summed into the residual, through one shared LayerNorm
  (``input_layernorm``) or, in the new architecture by default, one each (``ln_attn``, loaded
  as ``input_layernorm``, and ``ln_mlp``); without it, Llama's sequential block with
  LayerNorms.
- The MLP is ``dense_4h_to_h(gelu(dense_h_to_4h(x)))`` (exact GELU, no gate), ``bias`` puts a
  bias on every projection, LayerNorms have a bias (``layer_norm_epsilon``), ``ffn_hidden_size``
  defaults to 4x hidden, embeddings are tied by default.
- ALiBi models (``alibi``) are refused: ALiBi is not in this package's attention. The CPU's
  fused decoder stack computes Llama's exact layer, so this model never uses it.
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
from tgi_hpu_kernels.models.llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaModel,
    ModelBackend,
)
from tgi_hpu_kernels.models.starcoder2 import STARCODER2_LAYOUT
from tgi_hpu_kernels.parallel.sharding import TensorParallelLayout

__all__ = ["FalconDecoderLayer", "FalconForCausalLM", "FalconModel", "split_fused_qkv"]

# checkpoint name part -> ours (the fused query_key_value is split, not renamed)
_RENAMES = (
    ("transformer.word_embeddings.", "model.embed_tokens."),
    ("transformer.ln_f.", "model.norm."),
    ("transformer.h.", "model.layers."),
    (".ln_attn.", ".input_layernorm."),
    (".self_attention.dense.", ".self_attn.o_proj."),
    (".mlp.dense_h_to_4h.", ".mlp.c_fc."),
    (".mlp.dense_4h_to_h.", ".mlp.c_proj."),
)
_FUSED = ".self_attention.query_key_value."


class FalconDecoderLayer(nn.Module):
    """Falcon's block in Llama's calling convention: ``(out, residual)`` go to the next
    layer, which adds them (the parallel block's ``out`` is attention + MLP)."""

    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = LlamaAttention(config, layer_idx, backend)
        self.mlp = GeluMLP(
            size,
            config.intermediate_size,
            act=config.hidden_act,
            bias=config.mlp_bias,
            kernels=backend,
        )
        self.input_layernorm = LayerNorm(size, eps)  # the new architecture's ln_attn
        # the new architecture's own norm for the MLP; the sequential block's after attention
        self.ln_mlp = LayerNorm(size, eps) if config.parallel_norms == 2 else None
        sequential = config.parallel_norms == 0
        self.post_attention_layernorm = LayerNorm(size, eps) if sequential else None

    def forward(
        self,
        hidden: Tensor,
        residual: Tensor | None,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
    ) -> tuple[Tensor, Tensor]:
        if residual is not None:
            hidden = hidden + residual
        normed = self.input_layernorm(hidden)
        out = self.self_attn(normed, *rope, attn, kv)
        if self.post_attention_layernorm is not None:  # sequential
            hidden = hidden + out
            mlp_out: Tensor = self.mlp(self.post_attention_layernorm(hidden))
            return mlp_out, hidden
        mlp_in = normed if self.ln_mlp is None else self.ln_mlp(hidden)
        return out + self.mlp(mlp_in), hidden


class FalconModel(LlamaModel):
    """``LlamaModel``'s embedding and layer loop over Falcon layers and a final LayerNorm."""

    def __init__(self, config: ModelConfig, backend: ModelBackend) -> None:
        super().__init__(config, backend)  # on the meta device: the Llama layers cost nothing
        self.layers = nn.ModuleList(
            FalconDecoderLayer(config, i, backend) for i in range(config.num_hidden_layers)
        )
        # Called as the RMSNorm it replaces: forward and add_norm.
        self.norm = LayerNorm(config.hidden_size, config.rms_norm_eps)  # type: ignore[assignment]
        self.fuse_layers = False  # the fused stack is Llama's layer (RMSNorm, gated SiLU)


class FalconForCausalLM(LlamaForCausalLM):
    packed_modules_mapping: ClassVar[dict[str, tuple[str, int]]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
    }
    # after checkpoint_tensors, Falcon's projections have StarCoder2's names
    tp_layout: ClassVar[TensorParallelLayout] = STARCODER2_LAYOUT

    def __init__(
        self, config: ModelConfig, *, backend: ModelBackend, rotary: RotaryEmbedding
    ) -> None:
        super().__init__(config, backend=backend, rotary=rotary)
        self.model = FalconModel(config, backend)
        self.tie_weights()  # the head was tied to the replaced model's embedding

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Falcon's field names read into ``ModelConfig`` (``rms_norm_eps`` holds the
        LayerNorms' ``layer_norm_epsilon``), with FalconConfig's defaults.

        Raises:
            ValueError: ALiBi, a non-GELU activation or a missing field.
        """
        if raw.get("alibi"):
            raise ValueError("Falcon with alibi=True is not supported: ALiBi is not implemented")
        new = bool(raw.get("new_decoder_architecture", False))
        heads = raw.get("num_attention_heads", 71)
        hidden = raw.get("hidden_size", raw.get("n_embed", 4544))
        kv_heads = raw.get("num_kv_heads") or heads
        if not new and raw.get("multi_query", True):
            kv_heads = 1
        elif not new:
            kv_heads = heads  # one q/k/v triple per head, whatever num_kv_heads says
        with_defaults = {
            **raw,
            "vocab_size": raw.get("vocab_size", 65024),
            "hidden_size": hidden,
            "intermediate_size": raw.get("ffn_hidden_size") or 4 * hidden,
            "num_hidden_layers": raw.get("num_hidden_layers", 32),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": hidden // heads,
            "hidden_act": raw.get("activation", "gelu"),
        }
        config = parse_common(with_defaults, activations=tuple(GELU_APPROXIMATIONS))
        bias = bool(raw.get("bias", False))
        if new:  # parallel whatever parallel_attn says; two norms unless told one
            norms = int(raw.get("num_ln_in_parallel_attn") or 2)
        else:
            norms = 1 if raw.get("parallel_attn", True) else 0
        return replace(
            config,
            rms_norm_eps=float(raw.get("layer_norm_epsilon") or 1e-5),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            qkv_bias=bias,
            o_bias=bias,
            mlp_bias=bias,
            parallel_norms=norms,
        )

    @classmethod
    def checkpoint_tensors(
        cls, weights: Iterable[tuple[str, Tensor]], raw: Mapping[str, Any]
    ) -> Iterator[tuple[str, Tensor]]:
        """Splits each ``query_key_value`` weight or bias into Llama's q/k/v projections
        (grouped rows -> all queries, keys, values) and renames the rest to Llama's tree.

        Raises:
            ValueError: a fused tensor other than a weight or bias (a pre-quantized
                checkpoint's), or one whose rows are not the config's.
        """
        config = cls.parse_config(raw)
        yield from split_fused_qkv(weights, config, renames=_RENAMES, fused=_FUSED, family="Falcon")


def split_fused_qkv(
    weights: Iterable[tuple[str, Tensor]],
    config: ModelConfig,
    *,
    renames: Iterable[tuple[str, str]],
    fused: str,
    family: str,
) -> Iterator[tuple[str, Tensor]]:
    """Renames checkpoint tensors (``renames``: name part -> ours) and splits each weight or
    bias named ``fused``, laid out as ``num_key_value_heads`` groups of (the group's query
    heads, its key head, its value head), into Llama's q/k/v projections (Falcon and
    GPT-BigCode both fuse q/k/v this way).

    Raises:
        ValueError: a fused tensor other than a weight or bias (a pre-quantized
            checkpoint's), or one whose rows are not the config's.
    """
    groups, head_dim = config.num_key_value_heads, config.head_dim
    per_group = config.num_attention_heads // groups + 2  # queries, key, value
    for checkpoint_name, tensor in weights:
        name = checkpoint_name
        for old, new in renames:
            name = name.replace(old, new)
        if fused not in name:
            yield name, tensor
            continue
        if not name.endswith((".weight", ".bias")):
            raise ValueError(f"{family}: fused tensor {name!r} is not supported")
        if tensor.shape[0] != groups * per_group * head_dim:
            raise ValueError(
                f"checkpoint tensor {name!r} has {tensor.shape[0]} rows, "
                f"expected {groups * per_group * head_dim}"
            )
        grouped = tensor.reshape(groups, per_group, head_dim, *tensor.shape[1:])
        parts = {
            "q_proj": grouped[:, :-2],
            "k_proj": grouped[:, -2],
            "v_proj": grouped[:, -1],
        }
        for part, rows in parts.items():
            flat = rows.reshape(-1, *tensor.shape[1:]).contiguous()
            yield name.replace(fused, f".self_attn.{part}."), flat
