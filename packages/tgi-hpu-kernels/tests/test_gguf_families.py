"""GGUF files of every native family load with transformers' logits on the same weights.

Each tiny random checkpoint is written as llama.cpp's ``convert_hf_to_gguf.py`` writes one:
its metadata keys, gguf-py's own HF -> GGUF tensor names (``TensorNameMap``), and its value
changes (Q/K rows permuted for ``llama`` files, Gemma norms as ``1 + w``, Mixtral's experts
stacked into 3-D ``ffn_*_exps``, Phi-3's LongRoPE factors as tensors, Falcon's fused q/k/v
rows regrouped). Where llama.cpp writes no metadata for a setting (Qwen2's, StarCoder2's and
Mixtral's sliding windows; Gemma 2's ``query_pre_attn_scalar``; GPT-BigCode's and Falcon's MLP
width, always 4x hidden; Falcon's rope, always the default; Falcon's biases, which the
converter cannot reorder), the reference model takes what a GGUF then means.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.native_build import find_compiler
from tgi_hpu_kernels.loader import read_model_config
from tgi_hpu_kernels.loader.gguf_weights import gguf_config, open_gguf
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import Family, save_tiny_checkpoint, teacher_forced_logits

MakeRunner = Callable[..., TorchModelRunner]

_FALCON_GGUF: dict[str, Any] = {
    "bias": False,
    "ffn_hidden_size": None,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}
# family -> (GGUF architecture, config overrides for what a GGUF of it can say)
_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2": ("qwen2", {"use_sliding_window": False}),
    "qwen3": ("qwen3", {"use_sliding_window": False}),
    "gemma": ("gemma", {}),
    "gemma2": ("gemma2", {"query_pre_attn_scalar": 32}),  # head_dim: llama.cpp's scale
    "phi3": ("phi3", {}),
    "starcoder2": ("starcoder2", {"sliding_window": None}),
    "mixtral": ("llama", {"sliding_window": None}),
    "gpt_bigcode": ("starcoder", {"n_inner": None}),
    "falcon": ("falcon", _FALCON_GGUF),  # 7B: multi-query, one LayerNorm
    "falcon_new": ("falcon", _FALCON_GGUF),  # 40B: 2 KV groups, ln_attn and ln_mlp
    "falcon2": ("falcon", {**_FALCON_GGUF, "num_ln_in_parallel_attn": 1}),  # 11B: 2 groups, 1 norm
}
_BASE_FAMILIES = {"falcon2": "falcon_new"}  # test case -> the tiny family it starts from
_EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
_BLOCK_SIZE = 4


def _llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's ``LlamaModel.permute``."""
    shape = weights.shape
    grouped = weights.reshape(num_heads, 2, shape[0] // num_heads // 2, *shape[1:])
    return grouped.swapaxes(1, 2).reshape(shape)


def _llama_cpp_falcon_qkv(weights: np.ndarray, num_heads: int, num_kv_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's ``FalconModel`` q/k/v transform: rows per KV group
    (its queries, its key, its value) -> all queries, all keys, all values."""
    head_dim = weights.shape[1] // num_heads
    grouped = weights.reshape(num_kv_heads, num_heads // num_kv_heads + 2, head_dim, -1)
    q = grouped[:, :-2].reshape(num_heads * head_dim, -1)
    k = grouped[:, -2].reshape(num_kv_heads * head_dim, -1)
    v = grouped[:, -1].reshape(num_kv_heads * head_dim, -1)
    return np.concatenate((q, k, v))


def _add_metadata(writer: GGUFWriter, family: str, config: Any) -> None:
    writer.add_name(f"tiny-{family}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_eos_token_id(2)
    if family.startswith(("gpt_bigcode", "falcon")):  # StarCoderModel, FalconModel: a 4x MLP
        if family.startswith("falcon"):
            writer.add_tensor_data_layout("jploski")  # the q/k/v reorder
        writer.add_feed_forward_length(4 * config.hidden_size)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    rope = config.rope_parameters
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_freq_base(rope["rope_theta"])
    if family == "starcoder2":
        writer.add_layer_norm_eps(config.norm_epsilon)
    else:
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if family.startswith("gemma") or family == "qwen3":  # head_dim is not hidden / heads
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if family == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    if family == "mixtral":
        writer.add_expert_count(config.num_local_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
    if family == "phi3":
        original = rope["original_max_position_embeddings"]
        head_dim = config.hidden_size // config.num_attention_heads
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_rope_dimension_count(int(rope["partial_rotary_factor"] * head_dim))
        writer.add_sliding_window(config.sliding_window or 0)
        scale = config.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        for kind in ("long", "short"):
            factors = np.array(rope[f"{kind}_factor"], dtype=np.float32)
            writer.add_tensor(f"rope_factors_{kind}.weight", factors)


def _gguf_tensors(family: str, model: torch.nn.Module) -> list[tuple[str, np.ndarray]]:
    """The model's tensors under llama.cpp's names, with llama.cpp's value changes."""
    config: Any = model.config
    arch = gguf.MODEL_ARCH[_FAMILIES[family][0].upper()]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tensors = []
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp stores no output.weight for a tied head
        if ".mlp.experts." in name:  # transformers' fused experts -> llama.cpp's 3-D stacks
            block = name.split(".")[2]
            parts = np.split(data, 2, axis=1) if name.endswith("gate_up_proj") else [data]
            kinds = _EXPERTS[:2] if len(parts) == 2 else _EXPERTS[2:]
            tensors += [(f"blk.{block}.{k}.weight", p) for k, p in zip(kinds, parts, strict=True)]
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        if family == "mixtral" and ".q_proj." in name:
            data = _llama_cpp_permute(data, config.num_attention_heads)
        elif family == "mixtral" and ".k_proj." in name:
            data = _llama_cpp_permute(data, config.num_key_value_heads)
        elif family.startswith("gemma") and name.endswith("norm.weight"):
            data = data + 1.0
        elif family.startswith("falcon") and ".query_key_value." in name:
            heads = config.num_attention_heads
            data = _llama_cpp_falcon_qkv(data, heads, config.num_key_value_heads)
        tensors.append((gguf_name, np.ascontiguousarray(data)))
    return tensors


def _write_gguf(
    path: Path, family: str, model: torch.nn.Module, quantized: GGMLQuantizationType | None
) -> None:
    """``quantized``: the type of every matrix (1-D tensors stay F32)."""
    writer = GGUFWriter(str(path), _FAMILIES[family][0])
    _add_metadata(writer, family, model.config)
    for name, data in _gguf_tensors(family, model):
        if quantized is None or data.ndim < 2:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, quantized), raw_dtype=quantized)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _reference(tmp_path: Path, family: str) -> torch.nn.Module:
    base = _family(_BASE_FAMILIES.get(family, family))
    return save_tiny_checkpoint(tmp_path / "hf", base, **_FAMILIES[family][1])


def _family(name: str) -> Family:
    family: Family = name  # type: ignore[assignment]
    return family


def _assert_same_logits(runner: TorchModelRunner, model: torch.nn.Module, atol: float) -> None:
    generator = torch.Generator().manual_seed(0)
    # past Phi-3's window (32), short of its long rope factors (from 64, as transformers')
    sequences = torch.randint(3, 128, (2, 40), generator=generator)
    ours = teacher_forced_logits(runner, sequences.tolist(), 20, _BLOCK_SIZE)
    with torch.no_grad():
        expected = model(sequences).logits[:, :-1]
    torch.testing.assert_close(ours, expected, atol=atol, rtol=0)


@pytest.mark.parametrize("family", list(_FAMILIES))
def test_f32_gguf_matches_transformers(
    family: str, make_runner: MakeRunner, tmp_path: Path
) -> None:
    model = _reference(tmp_path, family)
    path = tmp_path / f"tiny-{family}.gguf"
    _write_gguf(path, family, model, None)
    _, config = read_model_config(RunnerSettings(model_id=str(path)))
    assert config.model_type == model.config.model_type
    _assert_same_logits(make_runner(path), model, atol=1e-4)


@pytest.mark.skipif(find_compiler() is None, reason="the CPU serves GGUF codes natively only")
@pytest.mark.parametrize("family", ["phi3", "mixtral", "falcon_new"])
def test_q8_0_gguf_matches_transformers_on_its_weights(
    family: str, make_runner: MakeRunner, tmp_path: Path
) -> None:
    """Fused (Phi-3; Falcon's, rows regrouped) and 3-D expert (Mixtral) matrices in Q8_0,
    compared with transformers on the same Q8_0-rounded weights; the layers keep the file's
    int8 codes."""
    model = _reference(tmp_path, family)
    path = tmp_path / f"tiny-{family}-q8_0.gguf"
    q8 = GGMLQuantizationType.Q8_0
    _write_gguf(path, family, model, q8)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:  # Q8_0 blocks run along rows: the converter's splits keep them
                rounded = gguf.quants.dequantize(gguf.quants.quantize(param.numpy(), q8), q8)
                param.copy_(torch.from_numpy(rounded))
    runner = make_runner(path)  # float32 on this CPU: served quantized
    assert runner.weights.endswith("(GGUF Q8_0 projections, Q8_0 head)")
    _assert_same_logits(runner, model, atol=1e-4)


@pytest.mark.parametrize(
    ("family", "new", "norms", "kv_heads"),
    [("falcon", False, 1, 1), ("falcon_new", True, 2, 2), ("falcon2", True, 1, 2)],
)
def test_falcon_architecture_is_read_from_its_tensors(
    family: str, new: bool, norms: int, kv_heads: int, tmp_path: Path
) -> None:
    """A Falcon GGUF names no architecture: a second LayerNorm (attn_norm_2) or more than
    one KV head make it the new one, always parallel, as llama.cpp's graph reads it."""
    path = tmp_path / f"tiny-{family}.gguf"
    _write_gguf(path, family, _reference(tmp_path, family), None)
    raw = gguf_config(open_gguf(path))
    assert raw["new_decoder_architecture"] is new
    assert (raw["num_ln_in_parallel_attn"], raw["num_kv_heads"]) == (norms, kv_heads)
    assert raw["parallel_attn"] and not raw["bias"]


def test_gemma2_query_scale_follows_llama_cpp(tmp_path: Path) -> None:
    """llama.cpp scales Gemma 2 queries by head_dim except in the 27B (46 layers), where
    hidden / heads; a GGUF holds no query_pre_attn_scalar."""
    scalars = []
    for layers in (26, 46):
        path = tmp_path / f"gemma2-{layers}.gguf"
        writer = GGUFWriter(str(path), "gemma2")
        writer.add_block_count(layers)
        writer.add_embedding_length(4608)
        writer.add_head_count(32)
        writer.add_key_length(128)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        scalars.append(gguf_config(open_gguf(path))["query_pre_attn_scalar"])
    assert scalars == [128, 144]
