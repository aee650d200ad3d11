"""Tiny random checkpoints for tests (here and in other packages); needs ``transformers``.

``save_tiny_checkpoint(folder, "llama")`` writes config.json + model.safetensors of a
two-layer model with random weights, built by transformers from its own config class, and
returns the transformers model so a test can compare against it. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["TINY_CONFIGS", "Family", "save_tiny_checkpoint"]

Family = Literal["llama", "llama3", "mistral", "qwen2"]

_COMMON: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.05,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": True}),
    # Llama 3.x rope scaling with a short original context, so it changes frequencies.
    "llama3": (
        "LlamaConfig",
        {
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "mistral": ("MistralConfig", {"sliding_window": 8, "head_dim": 16}),
    # Layer 0 full attention, layer 1 sliding (max_window_layers=1); q/k/v biases.
    "qwen2": (
        "Qwen2Config",
        {
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
            "tie_word_embeddings": True,
        },
    ),
}


def save_tiny_checkpoint(
    folder: Path, family: Family, *, seed: int = 0, **overrides: Any
) -> torch.nn.Module:
    """Writes a tiny random ``family`` checkpoint (float32 safetensors) into ``folder``.

    Returns:
        The transformers model (eval mode, float32, eager attention) whose weights were saved.
    """
    import transformers

    class_name, extra = TINY_CONFIGS[family]
    config = getattr(transformers, class_name)(**{**_COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM
    model: Any = auto.from_config(config, attn_implementation="eager")  # type: ignore[no-untyped-call]
    if family == "qwen2":  # transformers zero-initialises biases: make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.05)
    model.save_pretrained(folder)
    evaluated: torch.nn.Module = model.eval()
    return evaluated
