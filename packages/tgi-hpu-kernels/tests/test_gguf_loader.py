"""GGUF loading: config from metadata, dequantization, llama.cpp's Q/K row permutation undone.

A tiny random Llama is written as a GGUF exactly as llama.cpp's converter writes one (Q and
K rows permuted, tied head left out); loading it must reproduce transformers' logits of
the original model.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from tgi_core.contract import PrefillItem, PrefillShape, SamplingParams, StepPlan
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import read_model_config

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's ``LlamaModel.permute``."""
    shape = weights.shape
    return (
        weights.reshape(num_heads, 2, shape[0] // num_heads // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def _gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER_NAMES[module]}.{suffix}"


def write_gguf(path: Path, model: torch.nn.Module) -> None:
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    writer.add_eos_token_id(2)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: llama.cpp stores no output.weight
        data = tensor.float().numpy()
        if ".q_proj." in name:
            data = _llama_cpp_permute(data, config.num_attention_heads)
        elif ".k_proj." in name:
            data = _llama_cpp_permute(data, config.num_key_value_heads)
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_config_comes_from_metadata(tiny_checkpoint, tmp_path):
    _, hf_model = tiny_checkpoint("llama")
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hf_model)
    source, config = read_model_config(RunnerSettings(model_id=str(path)))
    assert (source.kind, source.path) == ("gguf", path)
    assert (config.model_type, config.num_hidden_layers, config.num_key_value_heads) == (
        "llama",
        2,
        2,
    )
    assert config.tie_word_embeddings and config.eos_token_ids == (2,)


def test_gguf_model_matches_transformers(tiny_checkpoint, make_runner, tmp_path):
    _, hf_model = tiny_checkpoint("llama")
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hf_model)
    runner = make_runner(path)
    tokens = [5, 17, 33, 9, 41, 7, 3, 90, 64]
    item = PrefillItem(
        request_id=0,
        token_ids=tuple(tokens),
        num_prompt_tokens=len(tokens),
        num_cached_tokens=0,
        block_table=(3, 1, 2),
        sampling=SamplingParams(),
    )
    logits = runner.compute_logits(StepPlan(step_id=0, shape=PrefillShape(1, 16), prefill=(item,)))
    with torch.no_grad():
        expected = hf_model(torch.tensor([tokens])).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-4, rtol=0)
