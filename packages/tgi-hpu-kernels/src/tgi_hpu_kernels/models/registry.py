"""Which implementation serves which checkpoint: one table, imported lazily.

A config's ``model_type`` picks the family; when it is absent (some GGUF conversions) the
first known name in ``architectures`` does. Adding a family is one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tgi_hpu_kernels.models.llama import LlamaForCausalLM

__all__ = ["SUPPORTED_MODEL_TYPES", "UnsupportedModelError", "resolve_model_class"]

# model_type -> (module under tgi_hpu_kernels.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "falcon": ("falcon", "FalconForCausalLM"),
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gpt_bigcode": ("gpt_bigcode", "GPTBigCodeForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "mixtral": ("mixtral", "MixtralForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "starcoder2": ("starcoder2", "Starcoder2ForCausalLM"),
}
_ARCHITECTURES: dict[str, str] = {
    "FalconForCausalLM": "falcon",
    "Gemma2ForCausalLM": "gemma2",
    "GemmaForCausalLM": "gemma",
    "GPTBigCodeForCausalLM": "gpt_bigcode",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Phi3ForCausalLM": "phi3",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Starcoder2ForCausalLM": "starcoder2",
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_MODELS))


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture has no implementation here."""


def resolve_model_class(raw_config: Mapping[str, Any]) -> type[LlamaForCausalLM]:
    """The model class for a HF config dict.

    Raises:
        UnsupportedModelError: neither ``model_type`` nor ``architectures`` is supported;
            the message lists the supported model types.
    """
    model_type = raw_config.get("model_type")
    architectures: Sequence[str] = raw_config.get("architectures") or ()
    if model_type not in _MODELS:
        model_type = next((_ARCHITECTURES[a] for a in architectures if a in _ARCHITECTURES), None)
    if model_type is None:
        asked = raw_config.get("model_type") or ", ".join(architectures) or "unknown"
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        raise UnsupportedModelError(
            f"Unsupported model type {asked!r}; supported model types: {supported}"
        )
    module_name, class_name = _MODELS[model_type]
    module = importlib.import_module(f"tgi_hpu_kernels.models.{module_name}")
    cls: type[LlamaForCausalLM] = getattr(module, class_name)  # every family extends Llama
    return cls
