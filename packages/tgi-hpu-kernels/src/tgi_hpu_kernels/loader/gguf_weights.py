"""Reading a llama.cpp GGUF file: config from its metadata, dequantized HF-named tensors.

Tensors are dequantized with ``gguf.quants.dequantize`` to float32, renamed to the HF
checkpoint names (gguf-py's ``TENSOR_MAPPING`` read backwards) and given back the values the
HF checkpoint held, undoing what llama.cpp's ``convert_hf_to_gguf.py`` changed, so that each
family's ``checkpoint_tensors`` then reads them as it reads safetensors:

- ``llama`` (Llama, Mistral, Mixtral): Q and K rows were permuted for llama.cpp's interleaved
  rotary layout; they are permuted back as transformers' GGUF loader does. Mixtral (a
  ``llama`` file with ``expert_count``) stores each layer's experts as 3-D ``ffn_*_exps``
  ``[experts, rows, cols]``, split here into the classic per-expert ``w1``/``w2``/``w3``.
- ``gemma``/``gemma2``: every ``*norm.weight`` was stored as ``1 + w``; 1 is subtracted.
  Gemma 2's ``ffn_norm`` is its ``pre_feedforward_layernorm``.
- ``phi3``: ``attn_qkv`` and ``ffn_up`` are the checkpoint's fused ``qkv_proj`` and
  ``gate_up_proj``; LongRoPE's factors are tensors (``rope_factors_long``/``_short``).
- ``starcoder2``: ``ffn_up``/``ffn_down`` are ``c_fc``/``c_proj``; norms carry biases.
- ``starcoder`` (GPT-BigCode, served as ``gpt_bigcode``): ``attn_qkv`` is the checkpoint's
  fused ``c_attn``, ``position_embd`` its learned positions ``wpe``; llama.cpp converts
  multi-query checkpoints only.
- ``falcon``: ``attn_qkv`` is the checkpoint's fused ``query_key_value`` with its rows
  reordered from (per KV group: its queries, its key, its value) to all queries, all keys, all
  values (the converter's "jploski" layout, which llama.cpp's graph reads as q/k/v views);
  they are put back in groups. With ``attn_norm_2`` (``ln_attn``, the new architecture's
  attention norm), ``attn_norm`` is ``ln_mlp``: llama.cpp feeds it to the MLP only.
- ``qwen2``: Llama's names with q/k/v biases, nothing permuted; ``qwen3`` adds the per-head
  ``attn_q_norm``/``attn_k_norm``.

Metadata llama.cpp does not write takes llama.cpp's own choice: Gemma 2's query scale is
``head_dim`` except for the 27B (46 layers: ``hidden / heads``), as in llama-model.cpp;
Falcon's architecture is read from its tensors and KV heads as llama.cpp's graph reads it.
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
    "attention.layer_norm_epsilon": "norm_epsilon",  # StarCoder2's LayerNorms
    "attention.key_length": "head_dim",
    "attention.sliding_window": "sliding_window",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
    "expert_count": "num_local_experts",
    "expert_used_count": "num_experts_per_tok",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
}
_TOP_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "position_embd": "model.wpe",  # GPT-BigCode's learned positions
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
_FALCON_TENSORS = {
    "attn_qkv": "self_attention.query_key_value",
    "ffn_up": "mlp.c_fc",
    "ffn_down": "mlp.c_proj",
}
# Where an architecture's layer tensors name other HF modules than Llama's.
_ARCH_LAYER_TENSORS = {
    "gemma2": {
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    "llama": {"ffn_gate_inp": "block_sparse_moe.gate"},  # Mixtral's router
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
    "qwen3": {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
    "starcoder": {"attn_qkv": "attn.c_attn", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"},
    "falcon": _FALCON_TENSORS,
    # with attn_norm_2 (ln_attn), llama.cpp feeds attn_norm to the MLP only: it is ln_mlp
    "falcon_two_norms": {
        **_FALCON_TENSORS,
        "attn_norm": "ln_mlp",
        "attn_norm_2": "input_layernorm",
    },
    "starcoder2": {"ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"},
}
_MODEL_TYPES = {"starcoder": "gpt_bigcode"}  # llama.cpp's architecture -> HF model_type
_EXPERT_TENSORS = {"ffn_gate_exps": "w1", "ffn_down_exps": "w2", "ffn_up_exps": "w3"}
_GEMMA_27B_LAYERS = 46  # llama.cpp's LLM_TYPE_27B, the one Gemma 2 scaled by hidden / heads


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
    raw: dict[str, Any] = {"model_type": _MODEL_TYPES.get(arch, arch), "gguf_architecture": arch}
    for key, hf_key in _CONFIG_KEYS.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            raw[hf_key] = value
    if arch == "llama" and raw.get("num_local_experts"):
        raw["model_type"] = "mixtral"
    elif arch == "llama" and "mistral" in name:
        raw["model_type"] = "mistral"
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
    if not raw.get("sliding_window"):
        raw.pop("sliding_window", None)  # llama.cpp writes 0 for none (Phi-3)
    raw.update(_arch_fields(reader, arch, raw, names))
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    if eos is not None:
        raw["eos_token_id"] = int(eos)
    return raw


def _head_dim(raw: dict[str, Any]) -> int:
    return int(raw.get("head_dim") or int(raw["hidden_size"]) // int(raw["num_attention_heads"]))


def _arch_fields(
    reader: GGUFReader, arch: str, raw: dict[str, Any], names: set[str]
) -> dict[str, Any]:
    """Config fields an architecture states otherwise than through the shared keys."""
    if arch in ("qwen2", "qwen3") and "sliding_window" in raw:
        return {"use_sliding_window": True}
    if arch == "gemma2":  # no query_pre_attn_scalar in a GGUF: llama.cpp's rule
        per_head = int(raw["hidden_size"]) // int(raw["num_attention_heads"])
        big = int(raw["num_hidden_layers"]) == _GEMMA_27B_LAYERS
        return {"query_pre_attn_scalar": per_head if big else _head_dim(raw)}
    if arch == "phi3":
        return _phi3_rope(reader, arch, raw, names)
    if arch == "falcon":
        return _falcon_fields(raw, names)
    return {}


def _falcon_fields(raw: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """FalconConfig's fields. A GGUF names no architecture: llama.cpp's Falcon graph always
    sums attention and MLP (parallel), through a second LayerNorm where ``attn_norm_2`` is
    present (the new architecture's two norms), with any number of KV heads. So the file is
    a new-architecture Falcon unless it has one norm and one KV head (7B's multi-query).
    The converter fails on a fused q/k/v bias, so a Falcon GGUF has no biases."""
    kv_heads = int(raw.get("num_key_value_heads") or 1)
    two_norms = "blk.0.attn_norm_2.weight" in names
    return {
        "new_decoder_architecture": two_norms or kv_heads > 1,
        "num_ln_in_parallel_attn": 2 if two_norms else 1,
        "num_kv_heads": kv_heads,
        "multi_query": kv_heads == 1,
        "parallel_attn": True,
        "bias": False,
        "layer_norm_epsilon": raw.get("norm_epsilon"),
        "ffn_hidden_size": raw.get("intermediate_size"),
    }


def _phi3_rope(
    reader: GGUFReader, arch: str, raw: dict[str, Any], names: set[str]
) -> dict[str, Any]:
    """Phi-3's partial rotary factor and LongRoPE (its factors are tensors in a GGUF)."""
    fields: dict[str, Any] = {}
    head_dim = _head_dim(raw)
    rotary = _field(reader, f"{arch}.rope.dimension_count")
    if rotary is not None:
        fields["partial_rotary_factor"] = int(rotary) / head_dim
    original = _field(reader, f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        fields["original_max_position_embeddings"] = int(original)
    if "rope_factors_long.weight" in names:
        scaling: dict[str, Any] = {
            "rope_type": "longrope",
            "long_factor": [float(f) for f in _tensor("rope_factors_long.weight", reader)],
            "short_factor": [float(f) for f in _tensor("rope_factors_short.weight", reader)],
        }
        attention = _field(reader, f"{arch}.rope.scaling.attn_factor")
        if attention is not None:
            scaling["attention_factor"] = float(attention)
        fields["rope_scaling"] = scaling
    return fields


def _tensor(name: str, reader: GGUFReader) -> np.ndarray:
    for tensor in reader.tensors:
        if tensor.name == name:
            return np.asarray(dequantize(tensor.data, tensor.tensor_type))
    raise KeyError(name)


def _hf_name(gguf_name: str, arch: str) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4:
        module = _ARCH_LAYER_TENSORS.get(arch, {}).get(parts[2]) or _LAYER_TENSORS.get(parts[2])
        return None if module is None else f"model.layers.{parts[1]}.{module}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_TENSORS:
        return f"{_TOP_TENSORS[parts[0]]}.{parts[1]}"
    return None


def _group_qkv(weights: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Falcon q/k/v reorder: rows (all queries, all keys, all values) back
    to the checkpoint's (per KV group: its queries, its key, its value)."""
    head_dim = weights.shape[0] // (heads + 2 * kv_heads)
    rest = weights.shape[1:]
    q, k, v = np.split(weights, [heads * head_dim, (heads + kv_heads) * head_dim])
    groups = [
        q.reshape(kv_heads, heads // kv_heads, head_dim, *rest),
        k.reshape(kv_heads, 1, head_dim, *rest),
        v.reshape(kv_heads, 1, head_dim, *rest),
    ]
    return np.concatenate(groups, axis=1).reshape(weights.shape)


def _unpermute_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's ``permute`` of Q/K rows (transformers' ``_reverse_permute_weights``)."""
    half = weights.shape[0] // num_heads // 2
    grouped = weights.reshape(num_heads, half, 2, *weights.shape[1:])
    return grouped.swapaxes(2, 1).reshape(weights.shape)


def iter_gguf_tensors(reader: GGUFReader, raw: dict[str, Any]) -> Iterator[tuple[str, Tensor]]:
    """Every weight as (HF name, float32 tensor) with the values the HF checkpoint holds."""
    arch = str(raw.get("gguf_architecture"))
    two_norms = arch == "falcon" and raw.get("num_ln_in_parallel_attn") == 2
    table = "falcon_two_norms" if two_norms else arch
    heads = {
        ".q_proj.": int(raw["num_attention_heads"]),
        ".k_proj.": int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
    }
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        weights = dequantize(tensor.data, tensor.tensor_type)
        if parts[0] == "blk" and parts[2] in _EXPERT_TENSORS:
            prefix = f"model.layers.{parts[1]}.block_sparse_moe.experts"
            for expert, rows in enumerate(weights):
                yield f"{prefix}.{expert}.{_EXPERT_TENSORS[parts[2]]}.{parts[3]}", _torch(rows)
            continue
        name = _hf_name(tensor.name, table)
        if name is None:
            continue  # rope_freqs and other non-parameters are read through the config
        if arch == "llama":
            for marker, num_heads in heads.items():
                if marker in name:
                    weights = _unpermute_rows(weights, num_heads)
        elif arch in ("gemma", "gemma2") and name.endswith("norm.weight"):
            weights = weights - 1.0  # stored as 1 + w; the family adds the 1 back
        elif arch == "falcon" and ".query_key_value." in name:
            weights = _group_qkv(weights, heads[".q_proj."], heads[".k_proj."])
        yield name, _torch(weights)


def _torch(weights: np.ndarray) -> Tensor:
    # A copy: F32 tensors come straight from the read-only memory map.
    return torch.from_numpy(np.array(weights, dtype=np.float32))
