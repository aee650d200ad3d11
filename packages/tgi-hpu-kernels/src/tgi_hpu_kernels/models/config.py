"""``ModelConfig``: the architecture numbers a model family needs, read from a HF config.

Reads both config generations: transformers 4 (``rope_theta`` + ``rope_scaling``) and
transformers 5 (``rope_parameters``). Family-specific rules (Qwen2's q/k/v bias and
per-layer sliding windows, Mistral's window) live in each family's ``parse_config``; GGUF
metadata is translated to this same dict form by the loader.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tgi_hpu_kernels.layers.rotary import ROPE_TYPES, RopeConfig

__all__ = ["ModelConfig", "parse_common", "parse_rope"]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A decoder-only transformer's shape; ``sliding_windows`` has one entry per layer."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_windows: tuple[int | None, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    hidden_act: str = "silu"
    # Gemma 2 (read by its layers only): the softmax scale (None: head_dim ** -0.5), and tanh
    # soft-caps of the attention scores and of the final logits (None: uncapped)
    attention_scale: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # Falcon (read by its layers only): 0 a sequential block; 1 or 2 a parallel one
    # (attention and MLP summed into the residual) with one shared norm or one norm each
    parallel_norms: int = 0

    def sliding_window(self, layer_idx: int) -> int | None:
        return self.sliding_windows[layer_idx] if self.sliding_windows else None

    @property
    def window(self) -> int | None:
        """The sliding window of the layers that have one (one value per model)."""
        windows = {w for w in self.sliding_windows if w is not None}
        if len(windows) > 1:
            raise ValueError(f"several sliding window sizes are not supported: {windows}")
        return windows.pop() if windows else None

    def with_rope(self, rope: RopeConfig) -> ModelConfig:
        return replace(self, rope=rope)


def parse_rope(raw: Mapping[str, Any]) -> RopeConfig:
    """RoPE parameters from ``rope_parameters`` (transformers 5) or ``rope_scaling`` (4).

    Raises:
        ValueError: a rope type this package does not implement, or LongRoPE without its
            short and long factors.
    """
    params = dict(raw.get("rope_parameters") or {})
    scaling = dict(raw.get("rope_scaling") or {})
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type not in ROPE_TYPES:
        supported = ", ".join(ROPE_TYPES)
        raise ValueError(f"rope type {rope_type!r} is not supported; supported: {supported}")
    # A top-level original context wins over the rope dict's, as in transformers (Phi-3).
    original = raw.get("original_max_position_embeddings")
    original = merged.get("original_max_position_embeddings") if original is None else original
    factor = merged.get("factor")
    if rope_type == "longrope":
        max_positions = int(raw.get("max_position_embeddings", 2048))
        original = int(original or max_positions)
        if factor is None:  # the context growth, which sets the default attention factor
            factor = max_positions / original
    freq_factors = raw.get("rope_freq_factors")
    return RopeConfig(
        rope_type=rope_type,
        theta=float(merged.get("rope_theta", raw.get("rope_theta", 10000.0))),
        factor=float(1.0 if factor is None else factor),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(original) if original is not None else None,
        freq_factors=tuple(float(f) for f in freq_factors) if freq_factors else None,
        short_factor=_factors(merged, "short_factor", rope_type),
        long_factor=_factors(merged, "long_factor", rope_type),
        attention_factor=_optional_float(merged.get("attention_factor")),
    )


def _factors(merged: Mapping[str, Any], key: str, rope_type: str) -> tuple[float, ...] | None:
    if rope_type != "longrope":
        return None
    values = merged.get(key)
    if not values:
        raise ValueError(f"rope type 'longrope' needs {key!r} in the rope parameters")
    return tuple(float(v) for v in values)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _eos_ids(raw: Mapping[str, Any]) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)


def parse_common(
    raw: Mapping[str, Any], *, activations: Collection[str] = ("silu",)
) -> ModelConfig:
    """The fields every Llama-like family shares (no bias, no sliding window);
    ``activations``: the ``hidden_act`` values the family implements.

    Raises:
        ValueError: a missing field, or an activation not in ``activations``.
    """
    act = raw.get("hidden_act", "silu")
    if act not in activations:
        allowed = ", ".join(repr(a) for a in activations)
        raise ValueError(f"hidden_act {act!r} is not supported (only {allowed})")
    try:
        num_heads = int(raw["num_attention_heads"])
        hidden_size = int(raw["hidden_size"])
        return ModelConfig(
            model_type=str(raw.get("model_type", "")),
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            rope=parse_rope(raw),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            eos_token_ids=_eos_ids(raw),
            hidden_act=str(act),
        )
    except KeyError as missing:
        raise ValueError(f"model config has no {missing.args[0]!r}") from None
