"""Gemma: the Llama decoder with Gemma's norm, scaled embeddings and a GeGLU MLP.

- RMSNorm scales by ``1 + weight``: ``checkpoint_tensors`` stores ``1 + w`` (summed in
  float32), so the standard RMSNorm kernels apply it. In bf16 the sum is then rounded to the
  model dtype, as TGI's Gemma does; transformers keeps it in float32.
- Token embeddings are multiplied by ``sqrt(hidden_size)`` rounded to the model dtype, as
  transformers does (``inputs_embeds`` passed in are taken as they are, as there).
- The MLP is ``down(gelu_tanh(gate) * up)`` (no bias); ``hidden_act`` "gelu" means the tanh
  approximation (transformers' rule). The device's fused decoder stack is Llama's SiLU layer,
  so it never runs for Gemma.
- ``head_dim`` is its own number (256 in Gemma-7B, not hidden / heads); embeddings are tied.

Gemma 2 (``gemma2.py``) adds two norms per layer and soft-capping.

A GGUF file's norms (stored by llama.cpp as ``1 + w``) reach ``checkpoint_tensors`` as ``w``
(``loader/gguf_weights.py``), like a safetensors checkpoint's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from tgi_hpu_kernels.layers import GatedMLP, RotaryEmbedding, VocabEmbedding
from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.models.llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    ModelBackend,
)

__all__ = [
    "GeluGatedMLP",
    "GemmaForCausalLM",
    "GemmaModel",
    "ScaledEmbedding",
    "parse_gemma_config",
]

# What transformers assumes where a Gemma config leaves these out.
_DEFAULTS = {"tie_word_embeddings": True, "head_dim": 256, "max_position_embeddings": 8192}


def parse_gemma_config(
    raw: Mapping[str, Any], accepted: Mapping[str, tuple[str, ...]]
) -> ModelConfig:
    """Llama's parse of a Gemma config whose activation keys (``accepted``: key -> the values
    that mean the tanh GELU there) hold a tanh GELU where present.

    Raises:
        ValueError: another activation, bidirectional attention, or a missing field.
    """
    model_type = raw.get("model_type", "gemma")
    for key, values in accepted.items():
        act = raw.get(key)
        if act is not None and act not in values:
            raise ValueError(f"{model_type} {key} {act!r} is not supported (only {values})")
    if raw.get("use_bidirectional_attention"):
        raise ValueError(f"{model_type} use_bidirectional_attention is not supported")
    # parse_common accepts only SiLU: the activation was checked above instead.
    rest = {key: value for key, value in raw.items() if key != "hidden_act"}
    config = LlamaForCausalLM.parse_config({**_DEFAULTS, **rest})
    return replace(config, mlp_bias=False)  # Gemma's MLP has no bias, whatever the config


class ScaledEmbedding(VocabEmbedding):
    """Embeddings times ``sqrt(hidden_size)``, the factor rounded to the weight's dtype first
    (transformers: ``sqrt(3072)`` is 55.5 in bf16)."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__(vocab_size, hidden_size)
        self.scale = hidden_size**0.5

    def forward(self, input_ids: Tensor) -> Tensor:
        scale = torch.tensor(self.scale).to(self.weight.dtype).item()
        return super().forward(input_ids) * scale


class GeluGatedMLP(GatedMLP):
    """``down(gelu_tanh(gate(x)) * up(x))`` with the merged gate/up projection."""

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        out: Tensor = self.down_proj(nnf.gelu(gate, approximate="tanh") * up)
        return out


class GemmaDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: ModelConfig, layer_idx: int, backend: ModelBackend) -> None:
        super().__init__(config, layer_idx, backend)
        self.mlp = GeluGatedMLP(config.hidden_size, config.intermediate_size, kernels=backend)


class GemmaModel(LlamaModel):
    layer_class: ClassVar[type[LlamaDecoderLayer]] = GemmaDecoderLayer

    def __init__(self, config: ModelConfig, backend: ModelBackend) -> None:
        super().__init__(config, backend)
        self.embed_tokens = ScaledEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            self.layer_class(config, i, backend) for i in range(config.num_hidden_layers)
        )
        self.fuse_layers = False  # the fused stack is Llama's layer (SiLU MLP)


class GemmaForCausalLM(LlamaForCausalLM):
    model_class: ClassVar[type[GemmaModel]] = GemmaModel

    def __init__(
        self, config: ModelConfig, *, backend: ModelBackend, rotary: RotaryEmbedding
    ) -> None:
        super().__init__(config, backend=backend, rotary=rotary)
        self.model = self.model_class(config, backend)
        self.tie_weights()  # the head was tied to the replaced model's embeddings

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        # Old Gemma configs name the activation in both keys; transformers 5 reads hidden_act.
        tanh = ("gelu", "gelu_pytorch_tanh")
        return parse_gemma_config(raw, {"hidden_act": tanh, "hidden_activation": tanh})

    @classmethod
    def checkpoint_tensors(
        cls, weights: Iterable[tuple[str, Tensor]], raw: Mapping[str, Any]
    ) -> Iterator[tuple[str, Tensor]]:
        """Norm weights ``w`` become ``1 + w`` (float32), the scale Gemma's norm applies."""
        for name, tensor in weights:
            yield name, (1.0 + tensor.float()) if name.endswith("norm.weight") else tensor
