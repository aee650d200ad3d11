"""Llama (1, 2, 3.x, SmolLM, TinyLlama...): the decoder the Mistral and Qwen2 files extend.

RMSNorm -> attention with rotary embeddings and grouped KV heads -> RMSNorm -> gated SiLU
MLP, pre-norm residuals. Q/K/V and gate/up projections are merged into one matmul each
(``packed_modules_mapping`` says how checkpoint tensors fill them). The model computes no
sampling and knows no device: attention kernels come from the ``AttentionBackend`` it is
built with, per-step metadata and the KV cache come in as arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.attention import AttentionBackend, AttentionMetadata, PagedAttention
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers import (
    DecoderLayerSpec,
    GatedMLP,
    LayerKernels,
    Linear,
    LMHead,
    QuantizedLinear,
    QuantizedWeight,
    RMSNorm,
    RotaryEmbedding,
    VocabEmbedding,
)
from tgi_hpu_kernels.models.config import ModelConfig, parse_common
from tgi_hpu_kernels.parallel.sharding import LLAMA_LAYOUT, TensorParallelLayout

if TYPE_CHECKING:
    from tgi_hpu_kernels.loader.prequantized import PackedRows

__all__ = [
    "LlamaAttention",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "LlamaModel",
    "ModelBackend",
]


class ModelBackend(AttentionBackend, LayerKernels, Protocol):
    """What a model is built with: the device's attention and elementwise kernels."""


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        qkv_heads = self.num_heads + 2 * self.num_kv_heads
        self.qkv_proj = Linear(
            config.hidden_size, qkv_heads * self.head_dim, bias=config.qkv_bias, kernels=backend
        )
        self.o_proj = Linear(
            self.num_heads * self.head_dim, config.hidden_size, bias=config.o_bias, kernels=backend
        )
        self.attn = PagedAttention(
            layer_idx=layer_idx,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            sliding_window=config.sliding_window(layer_idx),
            backend=backend,
        )
        self._kernels = backend

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attn: AttentionMetadata, kv: KVCache
    ) -> Tensor:
        n = x.shape[0]
        num_qk = self.num_heads + self.num_kv_heads
        qkv = self.qkv_proj(x).view(n, num_qk + self.num_kv_heads, self.head_dim)
        qk = self._kernels.rotary(qkv[:, :num_qk], cos, sin)  # [N, heads + kv_heads, d]
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        v = qkv[:, num_qk:]  # [N, kv_heads, d]
        out: Tensor = self.o_proj(self.attn(q, k, v, attn, kv))
        return out


class LlamaDecoderLayer(nn.Module):
    """Pre-norm residual block. The residual stream is carried beside the layer output so
    each norm runs fused with the add before it: ``(mlp_out, residual)`` go to the next."""

    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps, backend)
        self.self_attn = LlamaAttention(config, layer_idx, backend)
        self.post_attention_layernorm = RMSNorm(size, eps, backend)
        self.mlp = GatedMLP(size, config.intermediate_size, bias=config.mlp_bias, kernels=backend)

    def forward(
        self,
        hidden: Tensor,
        residual: Tensor | None,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
    ) -> tuple[Tensor, Tensor]:
        """``rope`` is the step's (cos, signed_sin) rows, shared by every layer."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_norm(hidden, residual)
        hidden = self.self_attn(hidden, *rope, attn, kv)
        hidden, residual = self.post_attention_layernorm.add_norm(hidden, residual)
        return self.mlp(hidden), residual

    def spec(self) -> DecoderLayerSpec:
        """This layer's parameters for a device's fused decoder stack."""
        attn, mlp = self.self_attn, self.mlp
        return DecoderLayerSpec(
            layer_idx=attn.attn.layer_idx,
            input_norm=self.input_layernorm.weight,
            qkv_weight=_weight(attn.qkv_proj),
            qkv_bias=attn.qkv_proj.bias,
            o_weight=_weight(attn.o_proj),
            o_bias=attn.o_proj.bias,
            post_norm=self.post_attention_layernorm.weight,
            gate_up_weight=_weight(mlp.gate_up_proj),
            gate_up_bias=mlp.gate_up_proj.bias,
            down_weight=_weight(mlp.down_proj),
            down_bias=mlp.down_proj.bias,
            eps=self.input_layernorm.eps,
            num_heads=attn.num_heads,
            num_kv_heads=attn.num_kv_heads,
            head_dim=attn.head_dim,
            scale=attn.attn.scale,
            sliding_window=attn.attn.sliding_window,
        )


def _weight(projection: nn.Module) -> Tensor | QuantizedWeight:
    """A projection's weights as a fused stack reads them: dense, or codes and scales."""
    if isinstance(projection, QuantizedLinear):
        return projection.quantized()
    return cast(Linear, projection).weight


def _stored(projection: nn.Module) -> Tensor:
    """The tensor holding a projection's weights (a new one when the model is moved)."""
    if isinstance(projection, QuantizedLinear):
        return projection.codes
    return cast(Linear, projection).weight


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, backend: ModelBackend) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, backend) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend)
        self._kernels = backend
        self._specs: list[DecoderLayerSpec] = []
        self._specs_of: Tensor | None = None  # the first projection's stored weights
        self.fuse_layers = True  # False: never the device's fused stack (tensor parallelism)

    def _layer_specs(self) -> list[DecoderLayerSpec]:
        """The layers' specs, rebuilt when the parameters were replaced (``.to()`` etc.)."""
        layers = [cast(LlamaDecoderLayer, layer) for layer in self.layers]
        stored = _stored(layers[0].self_attn.qkv_proj)
        if self._specs_of is not stored:
            self._specs = [layer.spec() for layer in layers]
            self._specs_of = stored
        return self._specs

    def forward(
        self,
        input_ids: Tensor,
        cos: Tensor,
        sin: Tensor,
        attn: AttentionMetadata,
        kv: KVCache,
        *,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        # inputs_embeds: a prompt's rows already embedded (a VLM's image features merged in)
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if not len(self.layers):
            out: Tensor = self.norm(hidden)
            return out
        fused = (
            self._kernels.decoder_stack(self._layer_specs(), hidden, (cos, sin), attn, kv)
            if self.fuse_layers
            else None
        )
        if fused is None:
            residual = hidden
            for i, layer in enumerate(self.layers):
                hidden, residual = layer(hidden, residual if i else None, (cos, sin), attn, kv)
            fused = hidden, residual
        return self.norm.add_norm(*fused)[0]


class LlamaForCausalLM(nn.Module):
    """The full model: ``forward`` -> final hidden states, ``compute_logits`` -> logits."""

    # checkpoint projection -> (merged parameter, shard index)
    packed_modules_mapping: ClassVar[dict[str, tuple[str, int]]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    # which checkpoint projections tensor parallelism splits by rows and by columns
    tp_layout: ClassVar[TensorParallelLayout] = LLAMA_LAYOUT

    def __init__(
        self, config: ModelConfig, *, backend: ModelBackend, rotary: RotaryEmbedding
    ) -> None:
        super().__init__()
        self.config = config
        self.rotary = rotary
        self.model = LlamaModel(config, backend)
        tied = self.model.embed_tokens if config.tie_word_embeddings else None
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, tied_to=tied, kernels=backend)

    def tie_weights(self) -> None:
        """Makes the LM head share the embedding matrix again (materialising breaks sharing);
        a quantized head keeps its own codes, loaded from the embedding matrix."""
        if self.config.tie_word_embeddings and isinstance(self.lm_head, LMHead):
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Llama's ``attention_bias`` covers q, k, v and o; ``mlp_bias`` the MLP."""
        bias = bool(raw.get("attention_bias", False))
        config = parse_common(raw)
        return replace(
            config, qkv_bias=bias, o_bias=bias, mlp_bias=bool(raw.get("mlp_bias", False))
        )

    def ensure_positions(self, length: int) -> None:
        """Extends the rotary tables to ``length`` positions where they are shorter."""
        self.rotary.ensure_length(length)

    @classmethod
    def checkpoint_tensors(
        cls, weights: Iterable[tuple[str, Tensor]], raw: Mapping[str, Any]
    ) -> Iterator[tuple[str, Tensor]]:
        """A safetensors checkpoint's tensors (HF names) as this family loads them, before
        tensor-parallel slicing: a family whose checkpoint fuses or stores tensors
        differently renames, splits or converts them here (Llama: as they are)."""
        yield from weights

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        attn: AttentionMetadata,
        kv: KVCache,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """``input_ids``/``positions`` ``[N]`` -> normed hidden states ``[N, hidden]``.

        ``inputs_embeds`` ``[N, hidden]``, when given, replaces the embedding of ``input_ids``.
        """
        cos, sin = self.rotary.lookup(positions)  # once per step, shared by every layer
        hidden: Tensor = self.model(input_ids, cos, sin, attn, kv, inputs_embeds=inputs_embeds)
        return hidden

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """``[n, hidden]`` -> float32 ``[n, vocab]``."""
        logits: Tensor = self.lm_head(hidden)
        return logits

    def _shard_sizes(self, packed: str) -> tuple[int, ...]:
        c = self.config
        if packed == "qkv_proj":
            kv_size = c.num_key_value_heads * c.head_dim
            return (c.num_attention_heads * c.head_dim, kv_size, kv_size)
        return (c.intermediate_size, c.intermediate_size)

    def checkpoint_target(self, name: str) -> tuple[str, int | None]:
        """The parameter a checkpoint tensor fills, and its part of a merged projection."""
        for source, (packed, shard) in self.packed_modules_mapping.items():
            if f".{source}." in name:
                return name.replace(f".{source}.", f".{packed}."), shard
        return name, None

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, Tensor | PackedRows]]) -> None:
        """Copies checkpoint tensors (HF names) into the parameters, casting to their dtype;
        a quantized layer (``QuantizedLinear``) quantizes its rows as they come, or takes a
        pre-quantized checkpoint's ``PackedRows`` as they are.

        Raises:
            ValueError: an unknown name, a shape mismatch, or a parameter left unloaded.
        """
        params = dict(self.named_parameters())
        quantized = {
            f"{name}.weight": module
            for name, module in self.named_modules()
            if isinstance(module, QuantizedLinear)
        }
        tied_head = quantized.get("lm_head.weight") if self.config.tie_word_embeddings else None
        loaded: set[tuple[str, int | None]] = set()
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # some tied checkpoints still store the (identical) head
            target, shard = self.checkpoint_target(name)
            rows = self.part_rows(target, shard)
            if target in quantized:
                layer = quantized[target]
                start, count = rows or (0, layer.out_features)
                codes = tensor if isinstance(tensor, Tensor) else tensor.codes
                if codes.shape[0] != count:
                    raise ValueError(
                        f"checkpoint tensor {name!r} has {codes.shape[0]} rows, expected {count}"
                    )
                if isinstance(tensor, Tensor):
                    layer.load_rows(start, tensor)
                else:
                    layer.load_packed(start, tensor.codes, tensor.scales, tensor.mins)
            elif not isinstance(tensor, Tensor):  # PackedRows
                raise ValueError(f"checkpoint tensor {name!r} is quantized, {target} is not")
            else:
                self._copy_into(params, name, tensor, target=target, rows=rows)
                if tied_head is not None and target == "model.embed_tokens.weight":
                    tied_head.load_rows(0, tensor)  # from the checkpoint's own precision
                    loaded.add(("lm_head.weight", None))
            loaded.add((target, shard))
        self._check_loaded([*params, *quantized], loaded)

    def part_rows(self, target: str, shard: int | None) -> tuple[int, int] | None:
        """(first row, row count) of a merged projection's part; None: the whole tensor."""
        if shard is None:
            return None
        sizes = self._shard_sizes(target.split(".")[-2])
        return sum(sizes[:shard]), sizes[shard]

    def _copy_into(
        self,
        params: Mapping[str, Tensor],
        name: str,
        tensor: Tensor,
        *,
        target: str,
        rows: tuple[int, int] | None,
    ) -> None:
        param = params.get(target)
        if param is None:
            raise ValueError(f"checkpoint tensor {name!r} matches no model parameter")
        destination = param.data if rows is None else param.data.narrow(0, *rows)
        if destination.shape != tensor.shape:
            raise ValueError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(destination.shape)}"
            )
        destination.copy_(tensor)

    def _check_loaded(self, names: Iterable[str], loaded: set[tuple[str, int | None]]) -> None:
        missing = sorted(
            {name for name in names for shard in self._shards(name) if (name, shard) not in loaded}
        )
        if missing:
            raise ValueError(f"checkpoint is missing weights: {missing[:8]}")

    def _shards(self, name: str) -> tuple[int | None, ...]:
        packed = name.split(".")[-2]
        if packed in ("qkv_proj", "gate_up_proj"):
            return tuple(range(len(self._shard_sizes(packed))))
        return (None,)
