"""Mistral: the Llama decoder with a sliding attention window on every layer.

``sliding_window`` (4096 in Mistral-7B-v0.1, null from v0.2 on) limits each query to the
``sliding_window`` most recent keys, itself included: key ``j`` is visible from query ``i``
when ``i - window < j <= i`` (transformers' ``sliding_window_overlay``). KV outside the window
stays in the cache and is masked, so paging and prefix caching work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tgi_hpu_kernels.models.config import ModelConfig, parse_common
from tgi_hpu_kernels.models.llama import LlamaForCausalLM

__all__ = ["MistralForCausalLM"]


class MistralForCausalLM(LlamaForCausalLM):
    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        config = parse_common(raw)
        window = raw.get("sliding_window")
        if window is None:
            return config
        return replace(config, sliding_windows=(int(window),) * config.num_hidden_layers)
