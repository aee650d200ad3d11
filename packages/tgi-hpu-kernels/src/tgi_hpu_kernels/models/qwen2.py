"""Qwen2 / Qwen2.5: the Llama decoder with q/k/v biases and optional per-layer windows.

The q, k and v projections always have a bias (o_proj has none). Sliding windows apply only
when ``use_sliding_window`` is set, and then to the layers transformers marks
``sliding_attention`` in ``layer_types`` (transformers 5) or, in older configs, to layers
``>= max_window_layers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tgi_hpu_kernels.models.config import ModelConfig, parse_common
from tgi_hpu_kernels.models.llama import LlamaForCausalLM

__all__ = ["Qwen2ForCausalLM", "sliding_windows"]


def sliding_windows(raw: Mapping[str, Any], num_layers: int) -> tuple[int | None, ...]:
    """Each layer's window (None: full attention) by Qwen2's rule (the module doc)."""
    window = raw.get("sliding_window")
    if not raw.get("use_sliding_window", False) or window is None:
        return ()
    layer_types = raw.get("layer_types")
    if layer_types is None:
        first = int(raw.get("max_window_layers", num_layers))
        layer_types = [
            "sliding_attention" if i >= first else "full_attention" for i in range(num_layers)
        ]
    return tuple(int(window) if t == "sliding_attention" else None for t in layer_types)


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        config = parse_common(raw)
        windows = sliding_windows(raw, config.num_hidden_layers)
        return replace(config, qkv_bias=True, sliding_windows=windows)
