"""The CLIP vision tower: patch embedding, pre-LN transformer encoder, selected hidden states.

Parameter names are transformers' ``CLIPVisionModel`` ones (``embeddings.*``,
``pre_layrnorm``, ``encoder.layers.N.*``), so a checkpoint fills it by name. Only the layers
up to the deepest selected hidden state are built and run: LLaVA reads layer -2, so the last
layer and ``post_layernorm`` are never needed (their weights are skipped at load time).
Attention is torch's ``scaled_dot_product_attention`` (no mask: every patch sees every
patch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from tgi_vlm.llava_next.config import ClipVisionConfig

__all__ = ["ClipVisionTower", "activation", "num_layers_needed"]


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """transformers' ``ACT2FN[name]`` for the activations LLaVA checkpoints use."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported") from None


def num_layers_needed(num_hidden_layers: int, feature_layers: Sequence[int]) -> int:
    """Encoder layers to run so that every selected hidden state exists.

    Hidden state 0 is the (pre-normed) embeddings, state i the output of layer i; negative
    indices count from the end of the ``num_hidden_layers + 1`` states.
    """
    num_states = num_hidden_layers + 1
    if not feature_layers or any(not -num_states <= i < num_states for i in feature_layers):
        raise ValueError(f"vision_feature_layer {list(feature_layers)} is out of range")
    return max(layer % num_states for layer in feature_layers)


class ClipEmbeddings(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.position_embedding = nn.Embedding(
            config.num_patches_per_side**2 + 1, config.hidden_size
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [N, num_patches, hidden]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class ClipAttention(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, hidden = x.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # [N, heads, L, d]
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        result: Tensor = self.out_proj(out.transpose(1, 2).reshape(batch, length, hidden))
        return result


class ClipMLP(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self._act = activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.fc2(self._act(self.fc1(x)))
        return result


class ClipEncoderLayer(nn.Module):
    """Pre-LN: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = ClipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClipMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        result: Tensor = x + self.mlp(self.layer_norm2(x))
        return result


class ClipEncoder(nn.Module):
    def __init__(self, config: ClipVisionConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(config) for _ in range(num_layers))


class ClipVisionTower(nn.Module):
    """CLIP's vision transformer, returning the hidden states ``feature_layers`` select."""

    def __init__(self, config: ClipVisionConfig, feature_layers: Sequence[int]) -> None:
        super().__init__()
        self.config = config
        self.feature_layers = tuple(feature_layers)
        num_layers = num_layers_needed(config.num_hidden_layers, self.feature_layers)
        self.embeddings = ClipEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = ClipEncoder(config, num_layers)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, image_size, image_size]`` -> ``[N, 1 + patches, hidden * len(layers)]``:
        the selected hidden states, concatenated on the feature axis in the given order."""
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        states = [hidden]
        for layer in self.encoder.layers:
            hidden = layer(hidden)
            states.append(hidden)
        num_states = self.config.num_hidden_layers + 1
        selected = [states[index % num_states] for index in self.feature_layers]
        return selected[0] if len(selected) == 1 else torch.cat(selected, dim=-1)
