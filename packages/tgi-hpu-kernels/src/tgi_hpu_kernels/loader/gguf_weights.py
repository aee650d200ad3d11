"""Reading a llama.cpp GGUF file: config from its metadata, dequantized HF-named tensors.

Tensors are dequantized with ``gguf.quants.dequantize`` to float32 and renamed to the HF
checkpoint names the models load. llama.cpp's converter permutes the rows of Llama's Q and K
projections (for its interleaved rotary layout); they are permuted back exactly as
transformers' GGUF loader does, so both load the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from torch import Tensor

from tgi_hpu_kernels.loader.source import ModelLoadError

__all__ = ["gguf_config", "iter_gguf_tensors", "open_gguf"]

# "<arch>.<key>" metadata -> HF config field
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "attention.sliding_window": "sliding_window",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
_TOP_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def open_gguf(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read GGUF file {path}: {err}") from err


def _field(reader: GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _rope_scaling(reader: GGUFReader, arch: str) -> dict[str, Any] | None:
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    scaling: dict[str, Any] = {"rope_type": kind}
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    if factor is not None:
        scaling["factor"] = float(factor)
    original = _field(reader, f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def gguf_config(reader: GGUFReader) -> dict[str, Any]:
    """A HF-style config dict from the GGUF metadata (what transformers' GGUF loader reads)."""
    arch = str(_field(reader, "general.architecture"))
    name = str(_field(reader, "general.name") or "").lower()
    model_type = "mistral" if arch == "llama" and "mistral" in name else arch
    raw: dict[str, Any] = {"model_type": model_type, "gguf_architecture": arch}
    for key, hf_key in _CONFIG_KEYS.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            raw[hf_key] = value
    if "vocab_size" not in raw:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is not None:
            raw["vocab_size"] = len(tokens.data)
    scaling = _rope_scaling(reader, arch)
    if scaling is not None:
        raw["rope_scaling"] = scaling
    names = {t.name for t in reader.tensors}
    raw["tie_word_embeddings"] = "output.weight" not in names
    if "rope_freqs.weight" in names:
        raw["rope_freq_factors"] = tuple(float(f) for f in _tensor("rope_freqs.weight", reader))
    if model_type == "qwen2" and "sliding_window" in raw:
        raw["use_sliding_window"] = True
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    if eos is not None:
        raw["eos_token_id"] = int(eos)
    return raw


def _tensor(name: str, reader: GGUFReader) -> np.ndarray:
    for tensor in reader.tensors:
        if tensor.name == name:
            return np.asarray(dequantize(tensor.data, tensor.tensor_type))
    raise KeyError(name)


def _hf_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_TENSORS:
        return f"{_TOP_TENSORS[parts[0]]}.{parts[1]}"
    return None


def _unpermute_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's ``permute`` of Q/K rows (transformers' ``_reverse_permute_weights``)."""
    half = weights.shape[0] // num_heads // 2
    grouped = weights.reshape(num_heads, half, 2, *weights.shape[1:])
    return grouped.swapaxes(2, 1).reshape(weights.shape)


def iter_gguf_tensors(reader: GGUFReader, raw: dict[str, Any]) -> Iterator[tuple[str, Tensor]]:
    """Every weight as (HF name, float32 tensor); Q/K rows un-permuted for Llama GGUFs."""
    permuted = raw.get("gguf_architecture") == "llama"
    heads = {
        ".q_proj.": int(raw["num_attention_heads"]),
        ".k_proj.": int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
    }
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            continue  # rope_freqs and other non-parameters are read through the config
        weights = dequantize(tensor.data, tensor.tensor_type)
        if permuted:
            for marker, num_heads in heads.items():
                if marker in name:
                    weights = _unpermute_rows(weights, num_heads)
        # A copy: F32 tensors come straight from the read-only memory map.
        yield name, torch.from_numpy(np.array(weights, dtype=np.float32))
